"""Atomic file writes: the one implementation every stainshift writer uses.

Why: a job killed mid-write (Slurm time limit, OOM, Ctrl-C) must never leave a half-written file
that looks complete — Snakemake and the next stage would take it for a finished output. So every
file is written to a temporary file in the destination's own directory (same filesystem, so the
rename is atomic), then ``os.replace``-d onto the destination only when writing succeeded; on any
exception the temporary file is removed and an existing destination is left as it was. Temporary
names are hidden: ``.{name}.<random>{suffix}``. No fsync: the guarantee covers killed processes,
not a power loss of the machine (which fsync per file would cost on network filesystems). Files get
mode 0o644 (``mkstemp`` creates 0o600, which would hide results from other users).

Directories (zarr patch stores) are :class:`stainshift.store.atomic_dir`'s: replacing a non-empty
directory takes a swap, and the temps of killed writers (gigabytes) are removed by pid.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FILE_MODE", "atomic_path", "write_bytes", "write_text", "write_json", "write_csv"]

FILE_MODE = 0o644


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path`` (parents created); rename it onto ``path`` if the block succeeds, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (text mode, ``encoding``); return ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding) as fh:
            fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, end: str = "", **json_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **json_kwargs) + end`` to ``path`` atomically; return ``path``."""
    return write_text(path, json.dumps(obj, **json_kwargs) + end)


def write_csv(path: str | os.PathLike, df: pd.DataFrame, **to_csv_kwargs: Any) -> Path:
    """Write ``df.to_csv(**to_csv_kwargs)`` to ``path`` atomically (``index=False`` unless given); return ``path``."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **to_csv_kwargs)
    return Path(path)
