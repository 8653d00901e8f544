"""Embedding files (HDF5, CLAM-style) and the predictions table: the one module owning both formats.

**Embeddings** — per run (method, source, seed; :mod:`stainshift.protocol`), the stores its heads
learn from: ``{R}/embeddings/{method}/{source}/seed{seed}/stores/{store}.h5`` for the source's
train/val stores, listed by ``.../seed{seed}/manifest.csv``; per (method, test store), every run's
embeddings of the store and of each normalized variant of it:
``{R}/embeddings/{method}/by_store/{store}/{source}/seed{seed}/{store}.h5`` and
``.../seed{seed}/variants/{store}/{stain_method}/{target}.h5`` (mirroring
``{R}/variants/{store}/{stain_method}/{target}.zarr``), listed by
``{R}/embeddings/{method}/by_store/{store}.csv``. Manifest columns: path, store, source, slide_id,
patient, split, center, variant_method, variant_target, n (the per-store manifest adds the run:
method, run_source, seed). Datasets:

attrs: ``method, source, seed, store, slide_id, center, split, patient, encoder, encoder_path,
feature_dim, variant_method, variant_target, source_store, software_version``. For raw stores
``variant_method = variant_target = "raw"``; for variants they are the stain method and target id
and ``store`` is the source (test) store id.

**Predictions** — one CSV per (method, test store): ``{R}/predictions/{method}/{store}.csv``, one row
per (run, protocol head, tile of the store or of one of its variant stores). Columns:

``method, source, source_kind, seed, protocol, encoder_centers, head_centers, store, slide_id,
patient, test, split, variant_method, variant_target, index, label, p0 … p{C−1}, pred, threshold``

``protocol`` is ``probe`` (linear probe on frozen features, every method) or ``native`` (the
method's own seed downstream). ``encoder_centers`` / ``head_centers``: the ``+``-joined centers
whose stores trained the encoder / the head (and chose its epoch); a row's test center ``test`` is
*seen* when it is in either. ``p{k}`` is the softmax probability of class k, ``pred`` the argmax,
``threshold`` the decision threshold on p1 chosen on the source's validation split (binary tasks;
NaN otherwise). Raw test stores have ``variant_method = variant_target = "raw"``
(cf. :data:`stainshift.metrics.variants.RAW`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

import stainshift
from stainshift.atomic import atomic_path, write_csv

RAW = "raw"
ATTR_KEYS = ("method", "source", "seed", "store", "slide_id", "center", "split", "patient", "encoder",
             "encoder_path", "feature_dim", "variant_method", "variant_target", "source_store", "software_version")
PREDICTION_COLUMNS = ["method", "source", "source_kind", "seed", "protocol", "encoder_centers", "head_centers",
                      "store", "slide_id", "patient", "test", "split", "variant_method", "variant_target", "index",
                      "label"]
PROTOCOLS = ("probe", "native")


def _attr(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    return value


def write_embeddings(path: str | os.PathLike, features: np.ndarray, *, coords: np.ndarray, label: np.ndarray,
                     index: np.ndarray, attrs: Mapping[str, Any]) -> Path:
    """Write one embeddings file atomically (:mod:`stainshift.atomic`). Returns ``path``."""
    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    arrays = {"coords": np.asarray(coords, np.int64).reshape(-1, 2), "label": np.asarray(label, np.int64).reshape(-1),
              "index": np.asarray(index, np.int64).reshape(-1)}
    if features.ndim != 2:
        raise ValueError(f"{path}: 'features' must be (N, D), got {features.shape}")
    for key, arr in arrays.items():
        if len(arr) != n:
            raise ValueError(f"{path}: '{key}' has {len(arr)} rows, features has {n}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("features", data=features, compression="gzip" if n > 1024 else None)
            for key, arr in arrays.items():
                fh.create_dataset(key, data=arr)
            merged = {"software_version": stainshift.__version__, "feature_dim": features.shape[1], **dict(attrs)}
            for key, value in merged.items():
                fh.attrs[key] = _attr(value)
    return path


def embeddings_count(path: str | os.PathLike) -> int:
    """Number of tiles (rows) of an embeddings file, without reading them."""
    with h5py.File(path, "r") as fh:
        return int(fh["features"].shape[0])


def read_embeddings(path: str | os.PathLike, rows: np.ndarray | None = None) -> dict[str, Any]:
    """``{"features", "coords", "label", "index", "attrs"}`` of an embeddings file; ``rows``
    (increasing row numbers) reads only those tiles (HDF5 selection: the rest is never loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    with h5py.File(path, "r") as fh:
        missing = [k for k in ("features", "coords", "label", "index") if k not in fh]
        if missing:
            raise KeyError(f"{path}: missing dataset(s) {', '.join(missing)}")
        sel = slice(None) if rows is None else np.asarray(rows, dtype=np.int64)
        out = {k: fh[k][sel] for k in ("features", "coords", "label", "index")}
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fh.attrs.items()}
    return out


def embedding_path(stores_dir: str, store: str, variant_method: str | None = None,
                   variant_target: str | None = None) -> str:
    """Path of the embeddings of a raw store or of one of its variants inside a run's ``stores/``."""
    if variant_method in (None, "", RAW):
        return f"{stores_dir}/{store}.h5"
    return f"{stores_dir}/variants/{store}/{variant_method}/{variant_target}.h5"


def prediction_frame(probs: np.ndarray, *, meta: Mapping[str, Any], index: np.ndarray, label: np.ndarray,
                     threshold: float = float("nan")) -> pd.DataFrame:
    """Rows of the predictions table for one (head, store): ``meta`` gives every non-array column
    of :data:`PREDICTION_COLUMNS` (missing ones: store for slide_id/patient, ``raw`` variants)."""
    n = len(probs)
    missing = [k for k in ("method", "source", "seed", "protocol", "store", "test") if k not in meta]
    if missing:
        raise KeyError(f"prediction_frame: meta lacks {missing}")
    cols: dict[str, Any] = {k: meta.get(k, "") for k in PREDICTION_COLUMNS[:-2]}
    cols["slide_id"] = meta.get("slide_id") or meta["store"]
    cols["patient"] = meta.get("patient") or cols["slide_id"]
    cols["variant_method"] = meta.get("variant_method") or RAW
    cols["variant_target"] = meta.get("variant_target") or RAW
    df = pd.DataFrame({**cols, "index": np.asarray(index, np.int64), "label": np.asarray(label, np.int64)},
                      index=range(n))
    for k in range(probs.shape[1]):
        df[f"p{k}"] = probs[:, k].astype(np.float32)
    df["pred"] = probs.argmax(1) if n else np.zeros(0, np.int64)
    df["threshold"] = float(threshold)
    return df


def write_predictions(path: str | os.PathLike, frames: list[pd.DataFrame]) -> Path:
    """Concatenate ``frames`` and write the predictions CSV atomically."""
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)
    return write_csv(path, df, index=False, float_format="%.6g")


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """The predictions table (``variant_target`` kept as a string)."""
    return pd.read_csv(path, dtype={"variant_target": str, "store": str, "slide_id": str, "patient": str, "source": str,
                                    "test": str, "encoder_centers": str, "head_centers": str})


def embed_store(encoder: Any, store_path: str | os.PathLike, out_path: str | os.PathLike, *, attrs: Mapping[str, Any],
                device: Any = "cpu", batch_size: int = 128) -> dict[str, Any]:
    """Features of every tile of one patch store → an embeddings file (store attrs copied in).

    Returns the file's attrs plus ``path`` and ``n`` (tiles)."""
    import torch

    from stainshift.store import PatchStore
    from stainshift.train import encode_images

    store = PatchStore.open(store_path)
    device = torch.device(device)
    feats = []
    for start in range(0, len(store), batch_size):
        tiles = store.read(slice(start, min(len(store), start + batch_size)))
        feats.append(encode_images(encoder, tiles, device, batch_size))
    features = np.concatenate(feats) if feats else np.zeros((0, int(encoder.out_dim)), np.float32)
    sa = store.attrs
    merged = {
        "slide_id": sa.get("slide_id"), "center": sa.get("center"), "split": sa.get("split"),
        "patient": sa.get("patient"), "variant_method": sa.get("stain_method") or RAW,
        "variant_target": sa.get("stain_target") or RAW, "source_store": str(store_path), **dict(attrs),
    }
    write_embeddings(out_path, features, coords=store.coords, label=store.label, index=np.arange(len(store)),
                     attrs=merged)
    return {"path": str(out_path), "n": len(store), **merged}


def embed_stores(encoder: Any, jobs: Sequence[tuple[str, str, str, str]], stores_dir: str, *,
                 attrs: Mapping[str, Any], device: Any = "cpu", batch_size: int = 128,
                 log: logging.Logger | None = None) -> list[dict[str, Any]]:
    """Embed each ``(store id, store path, variant_method, variant_target)`` of ``jobs`` into
    ``stores_dir`` (:func:`embedding_path`) and return the manifest rows (path, store, source,
    slide_id, patient, split, center, variant_method, variant_target, n)."""
    rows = []
    for k, (store, path, vm, vt) in enumerate(jobs, 1):
        out = embedding_path(stores_dir, store, vm, vt)
        info = embed_store(encoder, path, out, attrs={**attrs, "store": store}, device=device, batch_size=batch_size)
        rows.append({"path": out, "store": store, "source": path, "slide_id": info.get("slide_id"),
                     "patient": info.get("patient"), "split": info.get("split"), "center": info.get("center"),
                     "variant_method": vm, "variant_target": vt, "n": info["n"]})
        if log is not None:
            log.info("[%d/%d] %s: %d tiles -> %s", k, len(jobs), path, info["n"], out)
    return rows
