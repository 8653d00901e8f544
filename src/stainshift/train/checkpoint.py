"""Files of a training run: atomic torch saves, ``weights_only`` loads, RNG states for exact resume,
the resume fingerprint (config, stores, code digest, thread count) and the encoder file."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

import stainshift
from stainshift import atomic
from stainshift.models import build_encoder


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to ``path`` atomically (:mod:`stainshift.atomic`: no half-written files)."""
    path = Path(path)
    try:
        with atomic.atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as "iostream error" without a path
        raise OSError(f"could not write {path}: {err}. Check free space and write permission in {path.parent}; "
                      f"the previous {path.name} (if any) is unchanged.") from err


def load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load with ``weights_only=True`` (checkpoints hold tensors, numbers, strings, lists)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """This process's torch / numpy / python (and CUDA) RNG states, as tensors and lists a
    ``weights_only`` checkpoint can hold."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(_flatten_py_state(random.getstate())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _flatten_py_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_state` (exact resume)."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def package_digest(root: str | os.PathLike | None = None) -> str:
    """SHA-256 (16 hex) of every ``.py`` file of the installed stainshift package (or ``root``):
    any change on the training path — methods, models, augmentations, stain, data, store — makes a
    checkpoint of an older code version unusable for resume."""
    root = Path(root) if root is not None else Path(stainshift.__file__).parent
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def run_fingerprint(cfg: dict[str, Any], stores: Sequence[str], method: str, world_size: int, code: str = "",
                    threads: int = 0) -> str:
    """Hash of what determines a run (config minus I/O-only keys, store paths and mtimes, method,
    world size, training code, CPU thread count — float reductions differ with it): a checkpoint
    is resumed only when it matches."""
    ignore = {"resume", "num_workers", "device", "cache_mb"}
    mtimes = [Path(p).stat().st_mtime_ns if Path(p).exists() else None for p in stores]  # re-made stores → fresh run
    payload = {"cfg": {k: v for k, v in cfg.items() if k not in ignore}, "stores": list(stores), "mtimes": mtimes,
               "method": method, "world_size": world_size, "code": code, "threads": threads}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_encoder(encoder: nn.Module, path: str | os.PathLike, **meta: Any) -> None:
    """Write ``encoder.pt``: {spec, state_dict, out_dim, software_version, **meta} atomically.
    An encoder whose weights live in a file of its own (``weights_in_file``: external encoders)
    is stored by its spec alone (``state_dict`` empty)."""
    state = ({} if getattr(encoder, "weights_in_file", False)
             else {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()})
    atomic_save({"spec": encoder.spec, "state_dict": state, "out_dim": int(encoder.out_dim),
                 "software_version": stainshift.__version__, **meta}, path)


def load_encoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the encoder of ``encoder.pt`` (eval mode, on ``device``)."""
    state = load(path)
    if "spec" not in state or "state_dict" not in state:
        raise ValueError(f"{path}: not an encoder file (keys 'spec' and 'state_dict' expected)")
    enc = build_encoder(state["spec"])
    if state["state_dict"] or not getattr(enc, "weights_in_file", False):
        enc.load_state_dict(state["state_dict"])
    return enc.to(device).eval()


def write_json(path: Path, obj: Any) -> None:
    """JSON (indented, sorted keys) written atomically (:mod:`stainshift.atomic`)."""
    atomic.write_json(path, obj, indent=2, sort_keys=True, default=str)
