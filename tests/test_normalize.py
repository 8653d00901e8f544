"""The normalize stage (issue 4): target plans and draws, variant stores, montages, and the
select_targets -> normalize -> normalize_montage rules on pre-made tile stores."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stainshift.stain.targets import (
    Candidate,
    plan_targets,
    read_targets,
    select_listed,
    select_random,
    tissue_share,
    write_json_atomic,
)
from stainshift.stain.variants import montage, normalize_store, sample_tiles
from stainshift.store import PatchStore, write_store
from stainshift.synth import CENTERS, render_he

sys.path.insert(0, str(Path(__file__).parent))
from test_stain import he_scene  # noqa: E402  (shared synthetic scene)


def tissue_tiles(center: str, n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    style = CENTERS[center]
    out = []
    for i in range(n):
        h, e = he_scene(seed * 100 + i, size, background=0.0)
        out.append(render_he(h * style.h_scale, e * style.e_scale, style.stain_matrix, 240.0))
    return np.stack(out)


def make_store(path: Path, tiles: np.ndarray, slide_id: str, patient: str, center: str) -> Path:
    n = len(tiles)
    attrs = {"slide_id": slide_id, "patient": patient, "center": center, "split": "test", "codec": "zstd",
             "patch_size": tiles.shape[1]}
    return write_store(
        path, tiles, coords=np.stack([np.arange(n) * 32, np.zeros(n)], 1), tissue_fraction=np.ones(n),
        label=np.arange(n) % 2, label_fraction=np.full(n, np.nan), attrs=attrs, codec="zstd",
    )


@pytest.fixture()
def stores(tmp_path: Path) -> list[Candidate]:
    out = []
    for i, center in enumerate(["center_a", "center_b", "center_c"]):
        tiles = tissue_tiles(center, 4, seed=i)
        tiles[0] = 245  # a background tile in every store: never a target
        path = make_store(tmp_path / f"s{i}.zarr", tiles, f"s{i}", f"p{i}", center)
        out.append(Candidate(str(path), f"s{i}", f"p{i}", center))
    return out


def test_plan_splits_evenly() -> None:
    plan = plan_targets(["vahadane", "macenko", "reinhard"], 69)
    assert len(plan) == 69 and len({t for t, _ in plan}) == 69
    counts = {m: sum(1 for _, x in plan if x == m) for m in ("vahadane", "macenko", "reinhard")}
    assert counts == {"vahadane": 23, "macenko": 23, "reinhard": 23}
    assert plan[0] == ("t00", "vahadane")
    with pytest.raises(ValueError, match="k must be >= 1"):
        plan_targets(["macenko"], 0)


def test_random_draw_one_per_patient_deterministic(stores, caplog) -> None:
    plan = plan_targets(["reinhard", "macenko", "vahadane"], 3)
    with caplog.at_level(logging.INFO, logger="stainshift.stain.targets"):
        a = select_random(plan, stores, seed=1)
    b = select_random(plan, stores, seed=1)
    assert a == b
    assert sorted(t["patient"] for t in a) == ["p0", "p1", "p2"]
    assert [t["method"] for t in a] == ["reinhard", "macenko", "vahadane"]
    assert all(t["index"] != 0 for t in a)  # the background tile is never chosen
    assert all(t["tissue_share"] >= 0.5 for t in a)
    with pytest.raises(ValueError, match="need as many patients"):
        select_random(plan_targets(["macenko"], 4), stores, seed=0)


def test_random_draw_skips_background_with_message(tmp_path, caplog) -> None:
    blank = make_store(tmp_path / "blank.zarr", np.full((3, 32, 32, 3), 250, np.uint8), "b", "pb", "center_a")
    good = make_store(tmp_path / "good.zarr", tissue_tiles("center_d", 2), "g", "pg", "center_d")
    cands = [Candidate(str(blank), "b", "pb"), Candidate(str(good), "g", "pg")]
    with caplog.at_level(logging.INFO, logger="stainshift.stain.targets"):
        chosen = select_random(plan_targets(["macenko"], 1), cands, seed=0)
    assert chosen[0]["patient"] == "pg"
    with pytest.raises(ValueError, match="only 0 of 1 targets"):
        select_random(plan_targets(["macenko"], 1), cands[:1] + [Candidate(str(blank), "b2", "pc")], seed=0)
    if any(r.getMessage().startswith("skipping") for r in caplog.records):
        assert any("mostly background" in r.getMessage() for r in caplog.records)


def test_listed_targets(tmp_path, stores) -> None:
    png = tmp_path / "target.png"
    Image.fromarray(tissue_tiles("center_b", 1, size=64)[0]).save(png)
    plan = plan_targets(["macenko", "reinhard"], 2)
    chosen = select_listed(plan, [str(png), f"{stores[0].path}:2"])
    assert chosen[0]["kind"] == "image" and chosen[1] == {**chosen[1], "kind": "store", "index": 2}
    white = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(white)
    with pytest.raises(ValueError, match=r"white.png.*mostly background"):
        select_listed(plan_targets(["macenko"], 1), [str(white)])
    with pytest.raises(ValueError, match="2 path"):
        select_listed(plan_targets(["macenko"], 1), [str(png), str(png)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        select_listed(plan_targets(["macenko"], 1), [str(tmp_path / "nope.png")])


def test_tissue_share() -> None:
    assert tissue_share(np.full((8, 8, 3), 250, np.uint8)) == 0.0
    assert tissue_share(tissue_tiles("center_a", 1)[0]) > 0.9


def test_normalize_store_writes_variants(tmp_path, stores) -> None:
    plan = plan_targets(["reinhard", "macenko", "vahadane"], 3)
    targets = select_random(plan, stores, seed=0)
    write_json_atomic(tmp_path / "targets.json", {"targets": targets})
    entries = read_targets(tmp_path / "targets.json")
    src = PatchStore.open(stores[1].path)
    outs = {t["id"]: str(tmp_path / "variants" / t["method"] / f"{t['id']}.zarr") for t in entries}
    fallbacks = normalize_store(stores[1].path, entries, outs, batch_size=3)
    assert fallbacks == {t["id"]: 1 for t in entries}  # the background tile
    raw = src.read(slice(None))
    for t in entries:
        var = PatchStore.open(outs[t["id"]])
        assert len(var) == len(src)
        assert np.array_equal(var.coords, src.coords) and np.array_equal(var.label, src.label)
        assert var.attrs["stain_method"] == t["method"] and var.attrs["stain_target"] == t["id"]
        assert var.attrs["stain_fallback_tiles"] == 1 and var.attrs["software_version"]
        assert var.attrs["slide_id"] == "s1"
        imgs = var.read(slice(None))
        assert np.array_equal(imgs[0], raw[0])  # background tile: identity
        assert np.abs(imgs[1:].astype(int) - raw[1:].astype(int)).mean() > 1.0


def test_montage(stores) -> None:
    """Rows raw + one per method, labelled; column 0 the framed target; every tile captioned with
    its store and index; background tiles (method fallback) framed grey and explained in a note."""
    from stainshift.stain.variants import FALLBACK_FRAME, TARGET_FRAME, montage_labels, montage_layout

    paths = [c.path for c in stores]
    tiles = sample_tiles(paths, 4, seed=0)
    assert tiles.shape == (4, 32, 32, 3)
    tiles, sources = sample_tiles(paths, 12, seed=0, with_sources=True)  # all, the 3 background tiles too
    for tile, (path, index) in zip(tiles, sources):
        np.testing.assert_array_equal(tile, PatchStore.open(path).read(index)[0])
    target = tissue_tiles("center_d", 1, size=48)[0]
    entry = {"id": "t07", "kind": "store", "path": paths[2], "index": 3, "method": "macenko", "center": "center_c",
             "patient": "p2"}
    img, flags = montage(tiles, target, ["reinhard", "macenko"], tile_px=40, sources=sources, target_entry=entry)
    assert img.dtype == np.uint8 and set(flags) == {"reinhard", "macenko"}
    labels = montage_labels(["reinhard", "macenko"], sources, entry)
    assert labels["rows"] == ["raw", "reinhard", "macenko"]
    assert labels["columns"][0] == f"s0\n#{sources[0][1]}" and labels["target"] == "target\ns2 #3"
    assert labels["title"][0].startswith(f"Target t07 from {paths[2]}:3") and "macenko" in labels["title"][1]
    labels["notes"] = ["note"]  # montage adds one: background tiles fall back
    lay = montage_layout(labels, 40)
    assert img.shape == (lay["size"][1], lay["size"][0], 3)

    def cell(r: int, c: int) -> np.ndarray:
        x, y = lay["cells"][r][c]
        return img[y : y + 40, x : x + 40].astype(int)

    def fit(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((40, 40), Image.Resampling.BILINEAR)).astype(int)

    np.testing.assert_array_equal(cell(0, 0), fit(target))  # column 0: the target, in the raw row ...
    x, y = lay["cells"][0][0]
    assert (img[y - 2, x + 20] == TARGET_FRAME).all() and (img[y + 20, x - 2] == TARGET_FRAME).all()  # ... framed
    assert (cell(1, 0) == 255).all() and (cell(2, 0) == 255).all()  # nothing under it
    for c in range(len(tiles)):
        np.testing.assert_array_equal(cell(0, c + 1), fit(tiles[c]))  # raw row: the tiles as sampled
    background = [c for c in range(len(tiles)) if (tiles[c] == 245).all()]
    assert len(background) == 3 and all(flags["macenko"][background]) and not flags["macenko"].all()
    for r, method in enumerate(["reinhard", "macenko"], start=1):
        for c in range(len(tiles)):
            x, y = lay["cells"][r][c + 1]
            framed = (img[y - 2, x + 20] == FALLBACK_FRAME).all()
            assert framed == bool(flags[method][c]), (method, c)
    for x0, y0, x1, y1 in lay["row_label_boxes"] + lay["column_boxes"]:  # every row and column has its text
        assert (img[y0:y1, x0:x1] < 100).all(-1).sum() > 10
    x, y = lay["notes_xy"]
    assert (img[y : y + lay["line_h"], x:] < 100).all(-1).sum() > 20  # the fallback note


def test_write_json_atomic_leaves_no_temp(tmp_path) -> None:
    path = write_json_atomic(tmp_path / "a" / "t.json", {"targets": []})
    assert json.loads(path.read_text()) == {"targets": []}
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]
    with pytest.raises(FileNotFoundError, match="select_targets"):
        read_targets(tmp_path / "missing.json")


@pytest.mark.slow
def test_normalize_rules_on_premade_stores(tmp_path) -> None:
    """select_targets -> normalize -> normalize_montage in Snakemake, tile stores made here
    (the tile rule is not run: --allowed-rules keeps the job set to this stage)."""
    from stainshift.store import write_manifest
    from workflow_helpers import make_workdir, run_snakemake

    # targets drawn from the test stores made here (the default draws from training stores)
    # methods: two classical + seed 004's neural (a CNN trained on the target's store by train_stain_transfer)
    work = make_workdir(tmp_path / "wf", {"normalize": {"targets": {"split": "test"},
                                                        "methods": ["reinhard", "vahadane", "neural"]}})
    for i, (sid, center) in enumerate([("a_test", "center_a"), ("b_test", "center_b"), ("c_test", "center_c")]):
        make_store(work / "results" / "tiles" / f"{sid}.zarr", tissue_tiles(center, 4, seed=i), sid,
                   f"{sid[0]}_p3", center)
        write_manifest(work / "results" / "tiles" / f"{sid}.zarr")
    wanted = ["results/variants/b_test/reinhard/t00.json", "results/normalize/montage/t02.png"]
    run_snakemake(work, "--allowed-rules", "select_targets", "train_stain_transfer", "normalize_store",
                  "normalize_montage", "--", *wanted)
    targets = json.loads((work / "results/normalize/targets.json").read_text())["targets"]
    assert [t["method"] for t in targets] == ["reinhard", "vahadane", "neural"]
    assert len({t["patient"] for t in targets}) == 3
    raw = PatchStore.open(work / "results/tiles/b_test.zarr").read(np.arange(4))
    for method, tid in [("reinhard", "t00"), ("vahadane", "t01"), ("neural", "t02")]:
        var = PatchStore.open(work / f"results/variants/b_test/{method}/{tid}.zarr")
        assert var.attrs["stain_method"] == method and len(var) == 4
        assert not np.array_equal(var.read(np.arange(4)), raw), method
    # the neural target's CNN learnt the style of the target's own store, and says so
    model = work / "results/normalize/stain_transfer/t02.pt"
    assert model.is_file() and (work / "results/normalize/stain_transfer/t02.csv").is_file()
    from stainshift.stain.neural import load_stain_transfer

    assert load_stain_transfer(model).params.meta["target"]["path"] == targets[2]["path"]
    png = np.asarray(Image.open(work / "results/normalize/montage/t02.png"))
    assert png.ndim == 3 and png.shape[0] > 4 * 96
    assert (work / "results/logs/normalize/b_test.log").is_file()


def test_random_targets_come_from_training_domains_only() -> None:
    """A test-only domain (no training store) never provides a stain target; `from` widens or narrows."""
    import pandas as pd

    from stainshift.stain.targets import NormalizePlan

    stores = pd.DataFrame([
        {"store_id": f"{c}_{split}", "center": c, "split": split, "patient": f"{c}_p"}
        for c in ("center_a", "center_b") for split in ("train", "test")
    ] + [{"store_id": "ext-scanner-test", "center": "scanner", "split": "test", "patient": "mixed"}])
    cfg = {"methods": ["reinhard"], "stores": "test",
           "targets": {"mode": "random", "k": 1, "split": "test", "seed": 0}}

    def centers(targets: dict, training=("center_a", "center_b")) -> set[str]:
        plan = NormalizePlan({**cfg, "targets": {**cfg["targets"], **targets}}, stores, "results", training)
        return {c["center"] for c in plan.candidates()}

    assert centers({}) == {"center_a", "center_b"}  # default from: training_domains
    assert centers({"from": "all"}) == {"center_a", "center_b", "scanner"}
    assert centers({"from": ["scanner"]}) == {"scanner"}
    assert centers({"split": "train"}) == {"center_a", "center_b"}
    with pytest.raises(ValueError, match="unknown center"):
        centers({"from": ["nowhere"]})
    with pytest.raises(ValueError, match="no 'test' store in the centers"):
        centers({}, training=())


def test_restain_store_is_seeded_scaled_and_keeps_the_layout(tmp_path, stores) -> None:
    from stainshift.stain.targets import RESTAIN, restain_level, restain_strength
    from stainshift.stain.variants import restain_range, restain_store

    assert restain_range(1.0) == (0.5, 2.0) and restain_range(0.0) == (1.0, 1.0)
    assert restain_level(0.25) == "s0.25" and restain_strength("s0.25") == 0.25
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        restain_range(1.5)
    src = PatchStore.open(stores[1].path)
    a = restain_store(src.path, tmp_path / "a.zarr", 1.0, seed=3, batch_size=2)
    b = restain_store(src.path, tmp_path / "b.zarr", 1.0, seed=3, batch_size=2)
    assert a == b == 1  # the background tile has no two-stain estimate: left unchanged
    va, vb = PatchStore.open(tmp_path / "a.zarr"), PatchStore.open(tmp_path / "b.zarr")
    np.testing.assert_array_equal(va.read(slice(0, 4)), vb.read(slice(0, 4)))  # same seed, store, strength
    assert va.attrs["stain_method"] == RESTAIN and va.attrs["stain_target"] == "s1"
    assert va.attrs["stain_params"]["alpha_range"] == [0.5, 2.0] and va.attrs["stain_fallback_tiles"] == 1
    np.testing.assert_array_equal(va.coords, src.coords)
    np.testing.assert_array_equal(va.label, src.label)
    raw, new = src.read(slice(0, 4)).astype(int), va.read(slice(0, 4)).astype(int)
    assert np.abs(new[0] - raw[0]).max() <= 2  # background (zstd: lossless) stays
    assert np.abs(new[1:] - raw[1:]).mean() > 3  # tissue is re-stained
    weak = restain_store(src.path, tmp_path / "w.zarr", 0.05, seed=3)
    assert weak == 1
    moved_weak = np.abs(PatchStore.open(tmp_path / "w.zarr").read(slice(1, 4)).astype(int) - raw[1:]).mean()
    assert moved_weak < np.abs(new[1:] - raw[1:]).mean()  # strength orders the change
    assert va.attrs["stain_params"]["seed"] == 3


def test_more_targets_than_patients_is_refused_at_parse_time() -> None:
    import pandas as pd

    from stainshift.stain.targets import NormalizePlan

    stores = pd.DataFrame([{"store_id": f"{c}_train", "center": c, "split": "train", "patient": f"{c}_p"}
                           for c in ("center_a", "center_b")] + [{"store_id": "center_a_test", "center": "center_a",
                                                                  "split": "test", "patient": "center_a_q"}])
    cfg = {"methods": ["reinhard", "macenko", "vahadane"], "stores": "test",
           "targets": {"mode": "random", "k": 3, "split": "train", "seed": 0}}
    with pytest.raises(ValueError, match=r"k = 3 targets need as many patients .* have 2: \['center_a_p', 'center_b_p'\]"):
        NormalizePlan(cfg, stores, "results", ["center_a", "center_b"]).candidates()
    two = {**cfg, "methods": ["reinhard", "macenko"], "targets": {**cfg["targets"], "k": 2}}
    assert len(NormalizePlan(two, stores, "results", ["center_a", "center_b"]).candidates()) == 2


def test_montage_row_of_a_method_that_cannot_fit_the_target(stores, monkeypatch) -> None:
    """Another method's row on a target it cannot fit shows the raw tiles with a note (a random
    target is checked only against its own method); the target's own method failing is an error."""
    import stainshift.stain.variants as variants

    real = variants.fitted_normalizer

    def picky(method, target, model=None):
        if method == "reinhard":
            raise ValueError("reinhard: target tissue has no colour variation (flat image)")
        return real(method, target, model)

    monkeypatch.setattr(variants, "fitted_normalizer", picky)
    tiles = sample_tiles([c.path for c in stores], 4, seed=0)
    target = tissue_tiles("center_d", 1, size=48)[0]
    entry = {"id": "t01", "kind": "store", "path": stores[0].path, "index": 0, "method": "macenko"}
    img, flags = montage(tiles, target, ["reinhard", "macenko"], tile_px=40, target_entry=entry)
    assert img.dtype == np.uint8 and flags["reinhard"].all()
    with pytest.raises(ValueError, match="reinhard"):
        montage(tiles, target, ["reinhard", "macenko"], tile_px=40, target_entry=dict(entry, method="reinhard"))
