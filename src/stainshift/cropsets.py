"""Labelled crop sets (a folder of crops + a labels CSV) -> patch stores, one per (domain, split).

A config ``crops:`` entry (keys documented in workflow/schemas/config.schema.yaml) describes the CSV
columns. The import is deterministic:

1. read the CSV, check every file exists and every label is a known class;
2. de-duplicate exact copies (``dedup_column`` hash, or sha256 of the file bytes): keep the first
   copy; when copies disagree on the label, drop them all (``drop_label_conflicts``);
3. split: every crop to ``test`` for a set with ``role: test_only`` (a domain that only appears in
   test: it never trains an encoder or head, selects a model or gives a stain target), else the
   CSV's ``split_column`` if given, else a seeded stratified group split
   (sklearn ``StratifiedGroupKFold``, ``folds`` folds; ``round(test * folds)`` folds -> test,
   ``round(val * folds)`` -> val, the rest -> train), so crops of one patient (``patient_column``,
   else ``group_column``: slides nested in patients) never straddle splits; the split is made per
   domain; a CSV split that puts one patient in two splits is refused, naming the patient and lines;
4. write ``{name}-{domain}-{split}`` stores with coords = -1, tissue_fraction = NaN, label = class id,
   label_fraction = NaN; attrs as for slide stores (+ ``classes``, ``crop_files``, ``crop_groups``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image


__all__ = ["CropSetError", "CropSet", "load_crop_set", "plan_crop_stores", "write_crop_store", "import_crop_set"]

SPLITS = ("train", "val", "test")


class CropSetError(ValueError):
    """A crop-set problem; names the set, the CSV and the row/column."""


@dataclass
class CropSet:
    """A loaded, de-duplicated and split crop set."""

    name: str
    folder: Path
    table: pd.DataFrame  # columns: file, label_name, label, domain, split, group, patient
    classes: list[str]
    config: dict[str, Any]
    n_duplicates_dropped: int
    n_conflicts_dropped: int

    def store_ids(self) -> list[str]:
        """The patch-store ids of this crop set: ``{set}-{domain}-{split}``, sorted."""
        keys = self.table[["domain", "split"]].drop_duplicates().itertuples(index=False)
        return sorted(f"{self.name}-{d}-{s}" for d, s in keys)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _column(df: pd.DataFrame, col: str | None, what: str, csv: Path) -> pd.Series | None:
    if col is None:
        return None
    if col not in df.columns:
        raise CropSetError(f"{csv}: {what} column {col!r} not found (columns: {', '.join(df.columns)})")
    return df[col].astype(str)


ROLES = ("train_test", "test_only")
DEFAULT_SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}


def split_fractions(given: Mapping[str, float] | None) -> dict[str, float]:
    """The ``splits:`` fractions: the given ones; a split left out is 0 when the given ones already sum
    to 1 (``{test: 1.0}``), else takes its default (0.6 / 0.2 / 0.2)."""
    given = dict(given or {})
    fill = 0.0 if abs(sum(given.values()) - 1) <= 1e-6 else None
    return {k: float(given[k]) if k in given else (fill if fill is not None else v) for k, v in DEFAULT_SPLITS.items()}


def load_crop_set(entry: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> CropSet:
    """Read, check, de-duplicate and split one ``crops:`` entry."""
    from sklearn.model_selection import StratifiedGroupKFold

    cfg = dict(entry)
    name = str(cfg.get("name") or "")
    if not name or "-" in name:
        raise CropSetError(f"crops entry {cfg!r}: 'name' is required and must not contain '-'")
    folder = Path(base_dir) / str(cfg.get("folder", ""))
    if not folder.is_dir():
        raise CropSetError(f"crop set {name}: folder {folder} does not exist")
    csv = folder / str(cfg.get("labels", "labels.csv"))
    if not csv.is_file():
        raise CropSetError(f"crop set {name}: labels CSV {csv} does not exist")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    path_s = _column(df, cfg.get("path_column", "path"), "path", csv)
    label_s = _column(df, cfg.get("label_column", "label"), "label", csv)
    assert path_s is not None and label_s is not None
    domain_col = cfg.get("domain_column", "domain" if "domain" in df.columns else None)
    if domain_col is None and not cfg.get("domain"):
        raise CropSetError(f"crop set {name}: {csv} has no 'domain' column; set domain_column or domain")
    domain_s = _column(df, domain_col, "domain", csv) if domain_col else pd.Series([str(cfg["domain"])] * len(df))
    group_col = cfg.get("group_column")
    group_s = _column(df, group_col, "group", csv)
    patient_s = _column(df, cfg.get("patient_column") or group_col, "patient", csv)

    table = pd.DataFrame({
        "row": np.arange(len(df)) + 2,  # CSV line numbers (header = 1)
        "file": path_s.values, "label_name": label_s.values, "domain": domain_s.values,
    })
    table["group"] = group_s.values if group_s is not None else [f"crop{i}" for i in range(len(df))]
    table["patient"] = patient_s.values if patient_s is not None else ""
    bad_domain = table[~table["domain"].str.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*")]
    if len(bad_domain):
        r = bad_domain.iloc[0]
        raise CropSetError(f"{csv} line {r.row}: domain {r.domain!r} must match [A-Za-z0-9][A-Za-z0-9_.]* (used in store ids)")
    missing = [f for f in table["file"] if not (folder / f).is_file()]
    if missing:
        raise CropSetError(f"crop set {name}: {len(missing)} file(s) listed in {csv} do not exist, e.g. {folder / missing[0]}")
    classes = list(cfg.get("classes") or sorted(table["label_name"].unique()))
    unknown = sorted(set(table["label_name"]) - set(classes))
    if unknown:
        raise CropSetError(f"crop set {name}: {csv} has labels {unknown} not in classes {classes}")
    table["label"] = [classes.index(v) for v in table["label_name"]]

    # de-duplicate
    dedup_col = cfg.get("dedup_column", "sha256" if "sha256" in df.columns else None)
    hashes = df[dedup_col].astype(str).values if dedup_col else [_sha256(folder / f) for f in table["file"]]
    if dedup_col and dedup_col not in df.columns:
        raise CropSetError(f"{csv}: dedup column {dedup_col!r} not found")
    table["hash"] = hashes
    n0 = len(table)
    n_conflicts = 0
    if cfg.get("drop_label_conflicts", True):
        n_labels = table.groupby("hash")["label"].transform("nunique")
        n_conflicts = int((n_labels > 1).sum())
        table = table[n_labels == 1]
    table = table.drop_duplicates("hash", keep="first")
    n_dups = n0 - n_conflicts - len(table)

    # split
    split_col = cfg.get("split_column")
    role = cfg.get("role", "train_test")
    if role not in ROLES:
        raise CropSetError(f"crop set {name}: role {role!r} is not one of {list(ROLES)}")
    if role == "test_only":
        if split_col or cfg.get("splits"):
            raise CropSetError(f"crop set {name}: role test_only puts every crop into test; "
                               "remove split_column / splits from the entry")
        table["split"] = "test"
    elif split_col:
        if split_col not in df.columns:
            raise CropSetError(f"{csv}: split column {split_col!r} not found")
        table["split"] = df.loc[table["row"] - 2, split_col].astype(str).values
        bad = table[~table["split"].isin(SPLITS)]
        if len(bad):
            raise CropSetError(f"{csv} line {bad.iloc[0].row}: split {bad.iloc[0].split!r} is not one of {SPLITS}")
    else:
        fr = split_fractions(cfg.get("splits"))
        folds = int(cfg.get("folds", 5))
        n_test, n_val = round(fr["test"] * folds), round(fr["val"] * folds)
        if abs(sum(fr.values()) - 1) > 1e-6 or n_test + n_val > folds or abs(n_test / folds - fr["test"]) > 1e-6 \
                or abs(n_val / folds - fr["val"]) > 1e-6:
            raise CropSetError(f"crop set {name}: splits {fr} must sum to 1 and be multiples of 1/folds ({folds})")
        seed = int(cfg.get("seed", 0))
        split = pd.Series("train", index=table.index)
        for domain, part in table.groupby("domain", sort=True):
            units = part["patient"].where(part["patient"] != "", part["group"])  # a patient's slides stay together
            k = min(folds, units.nunique())
            if k < folds:
                raise CropSetError(f"crop set {name}: domain {domain} has {k} patients or groups, fewer than folds={folds}")
            sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            for fold, (_, idx) in enumerate(sgkf.split(np.zeros(len(part)), part["label"], units)):
                name_ = "test" if fold < n_test else "val" if fold < n_test + n_val else "train"
                split.loc[part.index[idx]] = name_
        table["split"] = split
    named = table[table["patient"] != ""]
    spread = named.groupby("patient")["split"].nunique()
    if (spread > 1).any():
        patient = spread[spread > 1].index[0]
        rows = named[named["patient"] == patient]
        where = ", ".join(f"line {r.row} ({r.split})" for r in rows.drop_duplicates("split").itertuples())
        raise CropSetError(f"crop set {name}: patient {patient!r} of {csv} is in several splits ({where}); "
                           "split by patient so no test patient is seen in training")
    table = table.sort_values(["domain", "split", "row"]).reset_index(drop=True)
    return CropSet(name, folder, table, classes, cfg, n_dups, n_conflicts)


def plan_crop_stores(entries: Sequence[Mapping[str, Any]], base_dir: str | os.PathLike = ".") -> list[dict[str, str]]:
    """One row per crop store: store_id, set, domain (center), split, patient, kind='crops'. A set whose
    training crops are all of one class is refused (CropSetError naming the set and its classes)."""
    rows = []
    for entry in entries:
        cs = load_crop_set(entry, base_dir)
        train = cs.table[cs.table["split"] == "train"]
        if len(train) and train["label"].nunique() < 2:
            raise CropSetError(
                f"crop set '{cs.name}' ({cs.folder}): every training crop has label "
                f"{train['label_name'].iloc[0]!r}; a classifier needs at least two classes to learn from "
                f"(classes in the labels file: {cs.classes})")
        for (domain, split), part in cs.table.groupby(["domain", "split"], sort=True):
            patients = sorted(set(part["patient"]) - {""})
            rows.append({"store_id": f"{cs.name}-{domain}-{split}", "set": cs.name, "center": domain, "split": split,
                         "patient": patients[0] if len(patients) == 1 else "mixed", "kind": "crops"})
    return rows


def _load_crop(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size is not None and rgb.size != (size, size):
                resample = Image.Resampling.BOX if rgb.width > size else Image.Resampling.BICUBIC
                rgb = rgb.resize((size, size), resample)
            return np.asarray(rgb)
    except Exception as exc:
        raise CropSetError(f"{path}: not a readable image ({exc})") from exc


def write_crop_store(cs: CropSet, store_id: str, out: str | os.PathLike, *, codec: str = "jpeg",
                     jpeg_quality: int = 90, progress: bool = False) -> int:
    """Write the store ``store_id`` (= ``{set}-{domain}-{split}``) of a loaded crop set; returns N."""
    from tqdm.auto import tqdm

    from stainshift.store import StoreWriter  # imports zarr: not at module level (the workflow's parse plans stores)

    try:
        set_name, domain, split = store_id.rsplit("-", 2)
    except ValueError as exc:
        raise CropSetError(f"store id {store_id!r} is not {{set}}-{{domain}}-{{split}}") from exc
    if set_name != cs.name:
        raise CropSetError(f"store {store_id} does not belong to crop set {cs.name}")
    part = cs.table[(cs.table["domain"] == domain) & (cs.table["split"] == split)]
    if part.empty:
        raise CropSetError(f"crop set {cs.name}: no crops for domain {domain!r}, split {split!r}")
    size = cs.config.get("patch_size")
    first = _load_crop(cs.folder / part["file"].iloc[0], size)
    if first.shape[0] != first.shape[1]:
        raise CropSetError(f"{cs.folder / part['file'].iloc[0]}: crops must be square (got {first.shape[1]}x{first.shape[0]}); set patch_size")
    side = first.shape[0]
    patients = sorted(set(part["patient"]) - {""})
    attrs = {
        "slide_id": store_id, "center": domain, "patient": patients[0] if len(patients) == 1 else "mixed",
        "split": split, "source_path": str(cs.folder), "source_size": None, "source_mtime": None,
        "mpp_level0": cs.config.get("mpp"), "target_mpp": cs.config.get("mpp"), "read_level": None,
        "mpp_source": "config" if cs.config.get("mpp") is not None else None,  # the crops entry's mpp key, if any
        "downsample": None, "patch_size": side, "stride": None, "filter": None, "filter_params": None,
        "seed": int(cs.config.get("seed", 0)), "kind": "crops", "crop_set": cs.name, "classes": cs.classes,
        "crop_files": list(part["file"]), "crop_groups": list(part["group"]),
        "crop_patients": [p or g for p, g in zip(part["patient"], part["group"])],
        "n_duplicates_dropped": cs.n_duplicates_dropped, "n_conflicts_dropped": cs.n_conflicts_dropped,
    }
    with StoreWriter(out, patch_size=side, attrs=attrs, codec=codec, jpeg_quality=jpeg_quality) as writer:
        for i, row in enumerate(tqdm(list(part.itertuples()), desc=store_id, disable=not progress)):
            tile = first if i == 0 else _load_crop(cs.folder / row.file, size)
            if tile.shape != (side, side, 3):
                raise CropSetError(f"{cs.folder / row.file}: {tile.shape[1]}x{tile.shape[0]} differs from {side}x{side}; set patch_size")
            writer.append(tile, (-1, -1), float("nan"), int(row.label), float("nan"))
    return len(part)


def tile_groups(attrs: Mapping[str, Any], n: int) -> tuple[list[str], list[str]]:
    """Per-tile (slide ids, patient ids) of a patch store with ``attrs`` and ``n`` tiles: a slide
    store's tiles all share its slide and patient; a crop store's come from ``crop_groups`` /
    ``crop_patients`` (a group without a slide id, e.g. ``crop12``, is made unique per store)."""
    store = str(attrs.get("slide_id", ""))
    groups = attrs.get("crop_groups")
    if not groups:
        return [store] * n, [str(attrs.get("patient") or store)] * n
    slides = [f"{store}:{g}" if str(g).startswith("crop") else str(g) for g in groups]
    patients = attrs.get("crop_patients") or groups
    patients = [f"{store}:{p}" if str(p).startswith("crop") else str(p) for p in patients]
    if len(slides) != n or len(patients) != n:
        raise ValueError(f"crop store {store}: {len(slides)} crop groups for {n} tiles")
    return slides, patients


def import_crop_set(entry: Mapping[str, Any], out_dir: str | os.PathLike, *, base_dir: str | os.PathLike = ".",
                    codec: str = "jpeg", jpeg_quality: int = 90) -> list[Path]:
    """Every store of one crop set under ``out_dir`` (library use; the workflow runs one job per store)."""
    cs = load_crop_set(entry, base_dir)
    paths = []
    for sid in cs.store_ids():
        path = Path(out_dir) / f"{sid}.zarr"
        write_crop_store(cs, sid, path, codec=codec, jpeg_quality=jpeg_quality)
        paths.append(path)
    return paths
