"""Normalization targets (seed 000, BRACS70): which tiles the test set is normalized to.

A *plan* fixes the target ids and their methods before any data exists (so the workflow DAG is
static): ``k`` targets split evenly over the methods, round-robin (seed 000: 69 targets over
Vahadane/Macenko/Reinhard = 23 each; with raw that is 70 test sets). The *selection* then fills
each slot with a tile:

* ``mode: random`` — a seeded draw from the patch stores of a named split, at most one target
  per patient (seed 000: "each taken from a different patient"); candidate tiles that are mostly
  background, or on which the slot's method has no usable estimate, are skipped (and logged);
* ``mode: list`` — the configured ``paths``: image files (png/jpg/tif) or ``<store>.zarr:<index>``.

The result goes to ``{R}/normalize/targets.json`` (written atomically).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_json

log = logging.getLogger(__name__)

#: A target tile must have at least this share of tissue pixels (summed OD >= 3 beta).
MIN_TARGET_TISSUE = 0.5


@dataclass(frozen=True)
class Candidate:
    """A patch store the random draw may take targets from."""

    path: str
    slide_id: str
    patient: str
    center: str = ""


def plan_targets(methods: Sequence[str], k: int) -> list[tuple[str, str]]:
    """``[(target_id, method), ...]``: ``k`` ids ``t00, t01, ...`` assigned round-robin to methods."""
    methods = list(methods)
    if not methods:
        raise ValueError("normalize.methods: at least one stain method is needed")
    if k < 1:
        raise ValueError(f"normalize.targets.k must be >= 1, got {k}")
    width = max(2, len(str(k - 1)))
    return [(f"t{i:0{width}d}", methods[i % len(methods)]) for i in range(k)]


def tissue_share(img: np.ndarray, io: float = 240.0, beta: float = 0.15) -> float:
    """Share of pixels whose summed OD is >= 3*beta (the estimation rule of the stain methods)."""
    from ._common import check_uint8_rgb  # imports torch: not at module level (the workflow parses with this module)

    check_uint8_rgb(img, "target")
    flat = np.asarray(img).reshape(-1, 3).astype(np.int64) + 1
    prod = flat[:, 0] * flat[:, 1] * flat[:, 2]
    return float(np.mean(prod <= io**3 * np.exp(-3.0 * beta)))


def check_target(img: np.ndarray, method: str, min_tissue: float = MIN_TARGET_TISSUE, name: str = "target") -> None:
    """Raise ValueError (naming ``name``) if ``img`` is mostly background or ``method`` cannot fit it."""
    from .normalizers import get_normalizer

    share = tissue_share(img)
    if share < min_tissue:
        raise ValueError(
            f"{name}: mostly background ({share:.0%} tissue pixels, need >= {min_tissue:.0%}); "
            "choose a tile with more tissue"
        )
    if method != "neural":  # a neural normalizer is trained on the target's store, not fitted to one tile
        get_normalizer(method).fit(img)


def load_target_image(spec: str) -> np.ndarray:
    """(H,W,3) uint8 from an image path or ``<store>.zarr:<index>``."""
    if ".zarr:" in spec:
        store_path, index = spec.rsplit(":", 1)
        from stainshift.store import PatchStore

        try:
            idx = int(index)
        except ValueError:
            raise ValueError(f"target {spec!r}: tile index {index!r} is not an integer") from None
        return PatchStore.open(store_path).read(idx)[0]
    from PIL import Image

    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"target image {spec!r} does not exist")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_target(entry: dict[str, Any]) -> np.ndarray:
    """The pixels of a targets.json entry."""
    if entry["kind"] == "store":
        return load_target_image(f"{entry['path']}:{entry['index']}")
    return load_target_image(entry["path"])


def style_tiles(entry: dict[str, Any], *, n: int, tile: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` seeded ``tile``-px tiles in the stain style of a targets.json entry, to train seed 004's
    stain-transfer CNN (:mod:`stainshift.stain.neural`) for it, with their tissue-class labels.

    A store target's style is its store (the slide it came from): tiles drawn from the whole store
    (random ``tile`` crops when its patches are larger), labels = the store's tile labels (None when
    it has none). An image target's style is that image: random crops, no labels.
    """
    rng = np.random.default_rng(seed)
    if entry["kind"] == "store":
        from stainshift.store import PatchStore

        store = PatchStore.open(entry["path"])
        if len(store) == 0:
            raise ValueError(f"target {entry.get('id')}: store {entry['path']} has no tiles to learn its style from")
        idx = np.sort(rng.integers(0, len(store), n))
        images = store.read(idx)
        labels = np.asarray(store.label)[idx]
        labels = labels if (labels >= 0).any() else None
    else:
        img = load_target_image(entry["path"])
        images, labels = np.repeat(img[None], n, axis=0), None
    h, w = images.shape[1:3]
    t = min(tile, h, w)
    ys, xs = rng.integers(0, h - t + 1, n), rng.integers(0, w - t + 1, n)
    out = np.stack([im[y:y + t, x:x + t] for im, y, x in zip(images, ys, xs)])
    return out, labels


def select_listed(plan: Sequence[tuple[str, str]], paths: Sequence[str], min_tissue: float = MIN_TARGET_TISSUE) -> list[dict]:
    """Targets from configured paths, one per plan slot (in order); each is checked."""
    if len(paths) != len(plan):
        raise ValueError(
            f"normalize.targets.paths: {len(paths)} path(s) given but normalize.targets.k = {len(plan)}; "
            "list exactly k targets"
        )
    out = []
    for (tid, method), spec in zip(plan, paths):
        img = load_target_image(spec)
        check_target(img, method, min_tissue, name=f"normalize.targets.paths entry {spec!r}")
        if ".zarr:" in spec:
            store_path, index = spec.rsplit(":", 1)
            src = {"kind": "store", "path": store_path, "index": int(index)}
        else:
            src = {"kind": "image", "path": spec}
        out.append({"id": tid, "method": method, **src, "tissue_share": round(tissue_share(img), 4)})
    return out


def select_random(
    plan: Sequence[tuple[str, str]],
    candidates: Sequence[Candidate],
    seed: int,
    min_tissue: float = MIN_TARGET_TISSUE,
    max_tries_per_patient: int = 64,
) -> list[dict]:
    """Seeded draw: one tile per patient for each plan slot; mostly-background tiles are skipped."""
    from stainshift.store import PatchStore

    by_patient: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_patient.setdefault(str(c.patient), []).append(c)
    patients = sorted(by_patient)
    if len(patients) < len(plan):
        raise ValueError(
            f"normalize.targets: k = {len(plan)} targets need as many patients (at most one target per "
            f"patient), but the split has {len(patients)}: {patients}"
        )
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    chosen: list[dict] = []
    slots = list(plan)
    for patient in order:
        if not slots:
            break
        tid, method = slots[0]
        stores = {c.path: PatchStore.open(c.path) for c in by_patient[patient]}
        tiles = [(c, i) for c in by_patient[patient] for i in range(len(stores[c.path]))]
        picked = None
        for j in rng.permutation(len(tiles))[:max_tries_per_patient]:
            cand, idx = tiles[int(j)]
            img = stores[cand.path].read(int(idx))[0]
            try:
                check_target(img, method, min_tissue, name=f"{cand.path}:{idx}")
            except ValueError as err:
                log.info("skipping target candidate: %s", err)
                continue
            picked = {
                "id": tid, "method": method, "kind": "store", "path": cand.path, "index": int(idx),
                "slide_id": cand.slide_id, "patient": patient, "center": cand.center,
                "tissue_share": round(tissue_share(img), 4),
            }
            break
        if picked is None:
            log.warning("patient %s: no tile with >= %.0f%% tissue usable for %s; trying the next patient",
                        patient, 100 * min_tissue, method)
            continue
        chosen.append(picked)
        slots.pop(0)
    if slots:
        raise ValueError(
            f"normalize.targets: only {len(chosen)} of {len(plan)} targets found (every tile of the remaining "
            f"patients is mostly background or unusable); lower k or normalize.targets.min_tissue"
        )
    return chosen


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON (indent 2, sorted keys, final newline) to ``path`` atomically (:mod:`stainshift.atomic`)."""
    return write_json(path, payload, end="\n", indent=2, sort_keys=True)


def read_targets(path: str | os.PathLike) -> list[dict]:
    """Target entries of a targets.json; a clear error when the file or key is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"targets file {path} does not exist (run select_targets first)")
    data = json.loads(path.read_text())
    if "targets" not in data:
        raise ValueError(f"{path}: no 'targets' key")
    return list(data["targets"])


__all__ = [
    "Candidate",
    "MIN_TARGET_TISSUE",
    "NormalizePlan",
    "check_target",
    "load_target",
    "load_target_image",
    "plan_targets",
    "style_tiles",
    "read_targets",
    "select_listed",
    "select_random",
    "tissue_share",
    "write_json_atomic",
]


RESTAIN = "restain"  # stain_method of a re-stained variant store (stainshift.stain.variants.restain_store)


def restain_level(strength: float) -> str:
    """The target id of a re-staining strength: ``s0.5``."""
    return f"s{float(strength):g}"


def restain_strength(level: str) -> float:
    """Inverse of :func:`restain_level`."""
    return float(str(level).removeprefix("s"))


class NormalizePlan:
    """What the `normalize` stage makes, from config['normalize'] and the table of patch stores alone.

    ``stores``: one row per patch store with columns store_id (or slide_id for a bare sample sheet),
    center, split, patient — tiled slides and labelled crop stores alike.

    Used by workflow/rules/normalize.smk (parse time): target ids/methods, the stores that get
    variants, the random-draw candidates and the final files.
    """

    def __init__(self, cfg: dict[str, Any], stores: Any, results: str,
                 training_centers: Sequence[str] | None = None) -> None:
        self.cfg = cfg
        self.targets_cfg = cfg["targets"]
        self.training_centers = list(training_centers) if training_centers is not None else None
        self.results = results.rstrip("/")
        self.stores = stores.rename(columns={"slide_id": "store_id"}) if "store_id" not in stores else stores
        mode = self.targets_cfg["mode"]
        if mode == "list" and not self.targets_cfg.get("paths"):
            raise ValueError("config normalize.targets: mode 'list' needs a non-empty 'paths' list")
        k = len(self.targets_cfg["paths"]) if mode == "list" else int(self.targets_cfg["k"])
        self.plan = plan_targets(cfg["methods"], k)

    def _stores(self, split: str) -> list[str]:
        return list(self.stores[self.stores["split"] == split]["store_id"])

    def store_ids(self) -> list[str]:
        """Stores that get normalized variants: the tile stores of split normalize.stores."""
        return self._stores(self.cfg["stores"])

    def restain_levels(self) -> list[str]:
        """Target ids of the re-stained variants (``normalize.restain.strengths``; stain.variants)."""
        return [restain_level(x) for x in (self.cfg.get("restain") or {}).get("strengths", [])]

    def variant_stores(self) -> list[tuple[str, str, str]]:
        """(store, stain_method, target id) of every variant store, normalized then re-stained (read
        by rules/train.smk)."""
        return ([(s, m, t) for s in self.store_ids() for t, m in self.plan]
                + [(s, RESTAIN, t) for s in self.store_ids() for t in self.restain_levels()])

    def target_centers(self) -> list[str] | None:
        """Centers a random target may come from (``normalize.targets.from``): ``training_domains``
        (default; centers with training stores, so a test-only domain never sets the stain of the
        variants), ``all``, or a list of centers. None = no restriction."""
        source = self.targets_cfg.get("from", "training_domains")
        if source == "all":
            return None
        if source == "training_domains":
            return self.training_centers
        centers = sorted(set(self.stores["center"]))
        unknown = [c for c in source if c not in centers]
        if unknown:
            raise ValueError(f"config normalize.targets.from: unknown center(s) {unknown} (centers: {centers})")
        return list(source)

    def candidates(self) -> list[dict[str, str]]:
        """Candidate stores of the random draw: the stores of normalize.targets.split in the centers
        of normalize.targets.from."""
        if self.targets_cfg["mode"] != "random":
            return []
        rows = self.stores[self.stores["split"] == self.targets_cfg["split"]]
        centers = self.target_centers()
        if centers is not None:
            rows = rows[rows["center"].isin(centers)]
        if not rows.empty and self.plan and self.store_ids():
            patients = {str(r.store_id) if str(r.patient) in ("", "mixed", "nan", "None") else str(r.patient)
                        for r in rows.itertuples()}
            if len(patients) < len(self.plan):  # the draw takes at most one target per patient: say it at parse time
                raise ValueError(
                    f"config normalize.targets: k = {len(self.plan)} targets need as many patients (at most one "
                    f"per patient), but the {self.targets_cfg['split']!r} stores of {centers or 'all centers'} "
                    f"have {len(patients)}: {sorted(patients)}; lower k or widen normalize.targets.from / split")
        if rows.empty and self.plan and self.store_ids():
            raise ValueError(
                f"config normalize.targets: no {self.targets_cfg['split']!r} store in the centers of "
                f"from: {self.targets_cfg.get('from', 'training_domains')!r} ({centers}) to draw stain targets from")
        # A crop store pooling several patients ("mixed", or none given) is drawn from as one unit:
        # at most one target per such store keeps "at most one target per patient" true.
        return [
            {"path": f"{self.results}/tiles/{r.store_id}.zarr", "slide_id": str(r.store_id),
             "patient": str(r.store_id) if str(r.patient) in ("", "mixed", "nan", "None") else str(r.patient),
             "center": str(r.center)}
            for r in rows.itertuples()
        ]

    def variant_paths(self, store: str = "{store}", suffix: str = ".zarr") -> list[str]:
        """The variant stores of ``store`` (``suffix=".json"``: their completion manifests)."""
        return [f"{self.results}/variants/{store}/{m}/{t}{suffix}" for t, m in self.plan]

    def restain_paths(self, store: str = "{store}", suffix: str = ".zarr") -> list[str]:
        """The re-stained variant stores of ``store``, one per strength."""
        return [f"{self.results}/variants/{store}/{RESTAIN}/{t}{suffix}" for t in self.restain_levels()]

    def final_files(self) -> list[str]:
        """The files the normalize stage must end with (variant manifests and montages)."""
        out = [f"{self.results}/variants/{s}/{m}/{t}.json" for s, m, t in self.variant_stores()]
        if self.store_ids():
            out += [f"{self.results}/normalize/montage/{t}.png" for t, _ in self.plan]
        return out
