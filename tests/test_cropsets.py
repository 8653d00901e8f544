"""Labelled crop sets -> patch stores per (domain, split): dedup, label conflicts, grouped splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stainshift.cropsets import CropSetError, import_crop_set, load_crop_set, plan_crop_stores
from stainshift.store import PatchStore


def make_set(root: Path, n_groups: int = 10, per_group: int = 4) -> Path:
    """Two domains x n_groups slides x per_group crops, plus one duplicate and one label conflict."""
    rng = np.random.default_rng(0)
    rows = ["path,label,domain,slide"]
    for d in ("scanA", "scanB"):
        for g in range(n_groups):
            for k in range(per_group):
                label = "atypical" if (g + k) % 2 else "normal"
                rel = f"{d}/{label}/{g}_{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / rel)
                rows.append(f"{rel},{label},{d},{d}_s{g}")
    # exact duplicate with the same label -> kept once; duplicate with another label -> all copies dropped
    (root / "scanA/normal/dup.png").write_bytes((root / "scanA/normal/0_0.png").read_bytes())
    rows.append("scanA/normal/dup.png,normal,scanA,scanA_s0")
    (root / "scanA/atypical/conf.png").write_bytes((root / "scanA/atypical/0_1.png").read_bytes())
    (root / "scanA/normal/conf2.png").write_bytes((root / "scanA/atypical/0_1.png").read_bytes())
    rows.append("scanA/normal/conf2.png,normal,scanA,scanA_s0")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_split_dedup_and_stores(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    entry = {"name": "mit", "folder": str(root), "group_column": "slide", "classes": ["normal", "atypical"], "seed": 1}
    cs = load_crop_set(entry)
    assert cs.n_duplicates_dropped == 1 and cs.n_conflicts_dropped == 2  # 0_1.png and conf2.png
    assert len(cs.table) == 80 - 1
    # no slide straddles splits; every domain has all splits; fractions 60/20/20 by groups
    assert (cs.table.groupby("group")["split"].nunique() == 1).all()
    counts = cs.table.groupby(["domain", "split"])["group"].nunique()
    assert counts.loc[("scanB", "train")] == 6 and counts.loc[("scanB", "test")] == 2
    assert load_crop_set(entry).table.equals(cs.table)  # deterministic
    by_file = cs.table.set_index("file")["split"].sort_index()
    assert not load_crop_set({**entry, "seed": 2}).table.set_index("file")["split"].sort_index().equals(by_file)
    plan = plan_crop_stores([entry])
    assert [r["store_id"] for r in plan] == cs.store_ids() and len(plan) == 6
    paths = import_crop_set(entry, tmp_path / "tiles")
    total = 0
    for p in paths:
        st = PatchStore.open(p)
        part = cs.table[cs.table["domain"].eq(st.attrs["center"]) & cs.table["split"].eq(st.attrs["split"])]
        assert (st.coords == -1).all() and np.isnan(st.tissue_fraction).all()
        assert st.label.tolist() == part["label"].tolist() and st.attrs["classes"] == ["normal", "atypical"]
        assert st.attrs["crop_files"] == part["file"].tolist() and st.patch_size == 24
        first = np.asarray(Image.open(root / part["file"].iloc[0]).convert("RGB"))
        assert np.abs(st.read(0)[0].astype(int) - first).mean() < 25  # JPEG of noise: close on average
        total += len(st)
    assert total == 79


def test_csv_splits_resize_and_errors(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set", n_groups=5, per_group=2)
    csv = (root / "labels.csv").read_text().splitlines()
    rows = [csv[0] + ",split"] + [r + ("," + ("train", "val", "test")[i % 3]) for i, r in enumerate(csv[1:])]
    (root / "with_split.csv").write_text("\n".join(rows) + "\n")
    entry = {"name": "s", "folder": str(root), "labels": "with_split.csv", "split_column": "split", "patch_size": 16}
    cs = load_crop_set(entry)
    assert set(cs.table["split"]) == {"train", "val", "test"}
    p = import_crop_set(entry, tmp_path / "out")[0]
    assert PatchStore.open(p).patch_size == 16
    with pytest.raises(CropSetError, match="must not contain '-'"):
        load_crop_set({"name": "a-b", "folder": str(root)})
    with pytest.raises(CropSetError, match=r"labels CSV .*nope\.csv does not exist"):
        load_crop_set({"name": "a", "folder": str(root), "labels": "nope.csv"})
    with pytest.raises(CropSetError, match="label column 'cls' not found"):
        load_crop_set({"name": "a", "folder": str(root), "label_column": "cls"})
    with pytest.raises(CropSetError, match=r"labels \['atypical'\] not in classes"):
        load_crop_set({"name": "a", "folder": str(root), "classes": ["normal"]})
    with pytest.raises(CropSetError, match="multiples of 1/folds"):
        load_crop_set({"name": "a", "folder": str(root), "splits": {"train": 0.5, "val": 0.25, "test": 0.25}})
    # a CSV split that puts one patient's crops in train and test is refused, naming the patient and lines
    rows = [csv[0] + ",split,patient"] + [r + "," + ("train", "test")[i % 2] + ",P7" for i, r in enumerate(csv[1:3])]
    (root / "leaky.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(CropSetError, match=r"patient 'P7' .* several splits \(line 2 \(train\), line 3 \(test\)\)"):
        load_crop_set({"name": "a", "folder": str(root), "labels": "leaky.csv", "split_column": "split",
                       "patient_column": "patient"})
    (root / "gone.csv").write_text("path,label,domain\nmissing.png,normal,x\n")
    with pytest.raises(CropSetError, match=r"1 file\(s\) listed .* do not exist"):
        load_crop_set({"name": "a", "folder": str(root), "labels": "gone.csv"})


@pytest.mark.realdata
def test_real_crop_sets(shared_data: Path, tmp_path: Path) -> None:
    ami = {"name": "ami_br", "folder": str(shared_data / "ami_br"), "group_column": "slide"}
    cs = load_crop_set(ami)
    assert set(cs.table["domain"]) == {"midog21_hamamatsu_xr", "midog21_hamamatsu_s360", "tupac16"}
    assert (cs.table.groupby("group")["split"].nunique() == 1).all()
    assert len(cs.store_ids()) == 9
    at = {"name": "atnorm_br", "folder": str(shared_data / "atnorm_br"), "classes": ["normal", "atypical"]}
    paths = import_crop_set(at, tmp_path)
    stores = [PatchStore.open(p) for p in paths]
    assert sum(len(s) for s in stores) == len(load_crop_set(at).table)
    assert all(s.patch_size == 128 and set(s.label) <= {0, 1} for s in stores)
    print({p.name: len(s) for p, s in zip(paths, stores)})


def test_dataset_gives_each_crop_its_slide(tmp_path: Path) -> None:
    """A crop store holds crops of many slides: TileDataset's per-tile slide ids (SASSL's relation
    R, slide-balanced batches) come from the store's crop groups, not one id per store."""
    from stainshift.data import TileDataset

    root = make_set(tmp_path / "set", n_groups=5, per_group=3)
    entry = {"name": "mit", "folder": str(root), "group_column": "slide", "classes": ["normal", "atypical"], "seed": 1}
    cs = load_crop_set(entry)
    train = [p for p in import_crop_set(entry, tmp_path / "tiles") if p.name.endswith("-train.zarr")]
    ds = TileDataset(train)
    groups = cs.table[cs.table["split"].eq("train")].sort_values(["domain"], kind="stable")["group"]
    assert len(ds.slide_ids) == groups.nunique() > len(train)
    assert sorted(np.asarray(ds.slide_ids)[ds.slides]) == sorted(groups.astype(str))


def test_one_class_training_crops_are_refused_at_planning(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([lines[0]] + [ln.replace(",atypical,", ",normal,") for ln in lines[1:]]) + "\n")
    with pytest.raises(CropSetError, match=r"crop set 'toy' .*every training crop has label 'normal'"):
        plan_crop_stores([{"name": "toy", "folder": str(root), "group_column": "slide"}])


def test_test_only_role_puts_every_crop_into_test(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set", n_groups=3)
    entry = {"name": "ext", "folder": str(root), "group_column": "slide", "role": "test_only"}
    cs = load_crop_set(entry)
    assert set(cs.table["split"]) == {"test"}
    assert [r["store_id"] for r in plan_crop_stores([entry])] == ["ext-scanA-test", "ext-scanB-test"]
    with pytest.raises(CropSetError, match="role test_only puts every crop into test"):
        load_crop_set({**entry, "splits": {"test": 1.0}})
    with pytest.raises(CropSetError, match="role 'holdout' is not one of"):
        load_crop_set({**entry, "role": "holdout"})


def test_split_fractions_left_out_are_zero_when_the_given_sum_to_one() -> None:
    from stainshift.cropsets import split_fractions

    assert split_fractions({"test": 1.0}) == {"train": 0.0, "val": 0.0, "test": 1.0}
    assert split_fractions({"train": 0.8, "test": 0.2}) == {"train": 0.8, "val": 0.0, "test": 0.2}
    assert split_fractions({"test": 0.4}) == {"train": 0.6, "val": 0.2, "test": 0.4}  # refused later: sum 1.2
    assert split_fractions(None) == {"train": 0.6, "val": 0.2, "test": 0.2}
