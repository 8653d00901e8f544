"""stainshift.slide_view: scores of the unseen sources, tile selection, slide heatmaps, crop montages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stainshift import slide_view as sv
from stainshift.embeddings import PREDICTION_COLUMNS
from stainshift.store import PatchStore, write_store

CENTERS = ("c0", "c1", "c2")
# (source id, centers it learns from): seed 000's `each` plus one leave-one-center-out source
SOURCES = {"c0": ("c0",), "c1": ("c1",), "c2": ("c2",), "loco-c0": ("c1", "c2")}


def fake_predictions(store_path: Path, *, method: str = "baseline", seeds: tuple[int, ...] = (0, 1),
                     sources: dict[str, tuple[str, ...]] = SOURCES, seed: int = 0) -> pd.DataFrame:
    """A predictions table (stainshift.embeddings columns) for one store: every source x seed x
    protocol scores the raw tiles and one normalized variant; P(class 1) follows the tile label."""
    store = PatchStore.open(store_path)
    rng = np.random.default_rng(seed)
    sid, center = store.attrs["slide_id"], store.attrs["center"]
    n = len(store)
    frames = []
    for src, centers in sources.items():
        for k in seeds:
            for protocol in ("probe", "native"):
                for variant in ("raw", "macenko"):
                    p1 = np.clip(0.65 * (store.label == 1) + 0.2 + rng.normal(0, 0.18, n), 0.01, 0.99)
                    frames.append(pd.DataFrame({
                        "method": method, "source": src, "source_kind": "center", "seed": k, "protocol": protocol,
                        "encoder_centers": "+".join(centers), "head_centers": "+".join(centers),
                        "store": sid, "slide_id": sid, "patient": "p0", "test": center, "split": "test",
                        "variant_method": variant, "variant_target": variant, "index": np.arange(n),
                        "label": store.label, "p0": 1 - p1, "p1": p1, "pred": (p1 >= 0.5).astype(int),
                        "threshold": 0.5}))
    df = pd.concat(frames, ignore_index=True)
    assert list(df.columns[: len(PREDICTION_COLUMNS)]) == PREDICTION_COLUMNS
    return df


def slide_store(root: Path, *, center: str = "c0", n_side: int = 6, size: int = 16) -> Path:
    """A store tiled from a small plain-image 'slide' (tile footprint 32 level-0 px) with an
    annotation square covering the top-left quarter; tiles inside it are labelled 1."""
    rng = np.random.default_rng(1)
    side0 = 32 * n_side
    slide = np.full((side0, side0, 3), 235, np.uint8)
    slide[16:-16, 16:-16] = (200, 120, 190)
    slide[: side0 // 2, : side0 // 2] = (120, 60, 160)
    Image.fromarray(slide).save(root / "slide.png")
    half = side0 // 2
    (root / "ann.geojson").write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"classification": '
        '{"name": "Tumor"}}, "geometry": {"type": "Polygon", "coordinates": '
        f'[[[0, 0], [{half}, 0], [{half}, {half}], [0, {half}], [0, 0]]]}}}}]}}')
    xy = np.array([(x, y) for y in range(0, side0, 32) for x in range(0, side0, 32)])
    label = ((xy[:, 0] < half) & (xy[:, 1] < half)).astype(int)
    label[-1] = -1
    path = root / "s0.zarr"
    write_store(path, rng.integers(0, 256, (len(xy), size, size, 3), dtype=np.uint8), coords=xy,
                tissue_fraction=rng.uniform(0.5, 1, len(xy)), label=label,
                label_fraction=label.clip(0).astype(float),
                attrs={"slide_id": "s0", "center": center, "split": "test", "patient": "p0", "patch_size": size,
                       "downsample": 2.0, "source_path": str(root / "slide.png"), "mpp_level0": 0.5,
                       "slide_dimensions": [side0, side0], "annotation": str(root / "ann.geojson")},
                codec="zstd")
    return path


def crop_store(root: Path, n: int = 30, size: int = 24) -> Path:
    rng = np.random.default_rng(2)
    label = np.arange(n) % 2
    images = np.where(label[:, None, None, None] == 1, 90, 200).astype(np.uint8) + rng.integers(0, 40, (n, size, size, 3), dtype=np.uint8)
    path = root / "mit-scanA-test.zarr"
    write_store(path, images, coords=np.full((n, 2), -1), tissue_fraction=np.full(n, np.nan), label=label,
                label_fraction=np.full(n, np.nan),
                attrs={"slide_id": "mit-scanA-test", "center": "c1", "split": "test", "patch_size": size,
                       "kind": "crops", "classes": ["normal", "atypical"]}, codec="zstd")
    return path


def _png_ok(path: Path) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 200 and img.shape[1] > 400 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    return img


def test_tile_scores_use_unseen_sources_raw_tiles_first_seed(tmp_path: Path) -> None:
    path = slide_store(tmp_path)
    preds = fake_predictions(path)
    sc = sv.tile_scores(preds, "s0")
    assert (sc.protocol, sc.seed, sc.seen) == ("probe", 0, False)
    assert sc.sources == ["c1", "c2", "loco-c0"]  # source c0 saw the slide's center
    rows = preds[(preds["variant_method"] == "raw") & (preds["protocol"] == "probe") & (preds["seed"] == 0)
                 & (preds["source"] != "c0")]
    assert sc.table["score"].to_numpy() == pytest.approx(rows.groupby("index")["p1"].mean().to_numpy())
    want = (rows["pred"] == rows["label"]).astype(float).where(rows["label"] >= 0).groupby(rows["index"]).mean()
    assert np.allclose(sc.table["share_correct"], want, equal_nan=True) and np.isnan(sc.table["share_correct"].iloc[-1])
    assert set(sc.per_source) == set(sc.sources) and sc.per_source["c1"]["score"].tolist() == pytest.approx(
        rows[rows["source"] == "c1"].sort_values("index")["p1"].tolist())


def test_tile_scores_fallback_and_errors(tmp_path: Path) -> None:
    path = slide_store(tmp_path)
    preds = fake_predictions(path, sources={"c0": ("c0",), "all": CENTERS})
    sc = sv.tile_scores(preds, "s0", protocol="native", seed=1)
    assert sc.seen and sc.sources == ["c0", "all"] and "every source saw" in sc.describe()
    with pytest.raises(ValueError, match="protocol 'fused'"):
        sv.tile_scores(preds, "s0", protocol="fused")
    with pytest.raises(ValueError, match="seed 7"):
        sv.tile_scores(preds, "s0", seed=7)
    with pytest.raises(ValueError, match="no raw-tile predictions"):
        sv.tile_scores(preds, "other")
    mixed = pd.concat([preds, preds.assign(method="simclr")])
    with pytest.raises(ValueError, match="mix methods"):
        sv.tile_scores(mixed, "s0")


def test_select_tiles_where(tmp_path: Path) -> None:
    path = slide_store(tmp_path)
    store = PatchStore.open(path)
    table = sv.tile_table(store, sv.tile_scores(fake_predictions(path), "s0"), ["normal", "tumour"])
    assert sv.select_tiles(table, ["label=1"])["index"].tolist() == np.flatnonzero(store.label == 1).tolist()
    assert sv.select_tiles(table, ["label=tumour"]).equals(sv.select_tiles(table, ["label==1"]))
    hi = sv.select_tiles(table, ["score>=0.6", "label!=-1"])
    assert len(hi) and (hi["score"] >= 0.6).all() and (hi["label"] >= 0).all()
    mid = sv.select_tiles(table, ["score=0.3..0.7"])
    assert mid["score"].between(0.3, 0.7).all() and len(mid) == table["score"].between(0.3, 0.7).sum()
    assert len(sv.select_tiles(table, ["center=c0"])) == len(store) and sv.select_tiles(table, ["center=c1"]).empty
    for bad, msg in [("label", "KEY OP VALUE"), ("colour=red", "unknown key"), ("score<high", "needs a number"),
                     ("score>0..1", "goes with '='")]:
        with pytest.raises(ValueError, match=msg):
            sv.select_tiles(table, [bad])
    with pytest.raises(ValueError, match="need --predictions"):
        sv.select_tiles(sv.tile_table(store), ["score>0.5"])


def test_slide_heatmap_png(tmp_path: Path) -> None:
    path = slide_store(tmp_path)
    out = sv.store_figure(path, sv.tile_scores(fake_predictions(path), "s0"), tmp_path / "plots" / "s0.png",
                          names=["normal", "tumour"])
    _png_ok(out)
    assert not list(out.parent.glob(".s0.png*"))
    # one source: no per-source row, binary correctness; a missing slide file still gives a figure
    one = fake_predictions(path, sources={"c1": ("c1",)})
    store = PatchStore.open(path)
    Path(store.attrs["source_path"]).unlink()
    _png_ok(sv.slide_heatmap(path, sv.tile_scores(one, "s0"), tmp_path / "one.png"))


def test_crop_montage_png(tmp_path: Path) -> None:
    path = crop_store(tmp_path)
    preds = fake_predictions(path, sources={"c0": ("c0",), "c2": ("c2",)}, seeds=(0,))
    sc = sv.tile_scores(preds, "mit-scanA-test")
    img = _png_ok(sv.store_figure(path, sc, tmp_path / "crops.png"))
    big = _png_ok(sv.crop_montage(path, sc, tmp_path / "crops_sub.png", max_tiles=10, columns=5))
    assert big.shape[0] < img.shape[0]
    assert sv.class_names(PatchStore.open(path).attrs) == ["normal", "atypical"]
    assert sv.class_names({}, 3, ["a"]) == ["a", "class 1", "class 2"]
