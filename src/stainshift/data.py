"""Torch data access to patch stores: a tile Dataset over many stores and epoch batch samplers.

:class:`TileDataset` reads the small per-tile arrays (labels, coords) of every store once, and opens
the zarr ``images`` lazily *per process*, so it is safe with ``num_workers > 0`` (each worker opens
its own handles after the fork/spawn). Items are dicts (see :mod:`stainshift.methods.base`):
``image`` uint8 (3, S, S), ``label``, ``slide``, ``center``, ``index``, ``store`` (int64 scalars).
``__getitems__`` reads a whole batch with one ``PatchStore.read`` per store.

:class:`EpochBatchSampler` yields the *global* batch order of an epoch as a pure function of
(seed, epoch) and gives each DDP rank its contiguous slice, so 1 process × B and 2 processes × B/2
see the same global batches. ``slide_balanced=True`` builds every batch from ≥ ``tiles_per_slide``
tiles per slide (SASSL needs same-slide pairs in each batch).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from stainshift.cropsets import tile_groups
from stainshift.store import PatchStore


class TileDataset(Dataset):
    """Tiles of one or many patch stores, addressed by a global index."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, labelled_only: bool = False,
                 cache_mb: float = 512.0) -> None:
        if not paths:
            raise ValueError("TileDataset: no stores given")
        self.paths = [str(p) for p in paths]
        store_idx, tile_idx, labels, slides, centers, coords = [], [], [], [], [], []
        self.store_attrs: list[dict[str, Any]] = []
        slide_index: dict[str, int] = {}  # slide id -> code, in order of first appearance
        center_names: list[str] = []
        sizes = set()
        for s, path in enumerate(self.paths):
            if not Path(path).exists():
                raise FileNotFoundError(f"patch store not found: {path}")
            store = PatchStore.open(path)
            attrs = dict(store.attrs)
            self.store_attrs.append(attrs)
            n = len(store)
            if n:
                sizes.add(tuple(store.images.shape[1:3]))
            attrs["slide_id"] = str(attrs.get("slide_id") or Path(path).stem)  # empty id: the store's name
            center = str(attrs.get("center") or "unknown")
            tile_slides, _ = tile_groups(attrs, n)  # a crop store: one slide id per crop (SASSL's R)
            for slide in tile_slides:
                slide_index.setdefault(slide, len(slide_index))
            if center not in center_names:
                center_names.append(center)
            store_idx.append(np.full(n, s, np.int64))
            tile_idx.append(np.arange(n, dtype=np.int64))
            labels.append(np.asarray(store.label, np.int64).reshape(n))
            slides.append(np.asarray([slide_index[t] for t in tile_slides], np.int64).reshape(n))
            centers.append(np.full(n, center_names.index(center), np.int64))
            coords.append(np.asarray(store.coords, np.int64).reshape(n, 2))
        if len(sizes) > 1:
            raise ValueError(f"TileDataset: stores have different tile sizes {sorted(sizes)}: {self.paths}")
        self.tile_size = sizes.pop()[0] if sizes else 0
        self.slide_ids = list(slide_index)
        self.centers = center_names
        self.store_index = np.concatenate(store_idx)
        self.tile_index = np.concatenate(tile_idx)
        self.labels = np.concatenate(labels)
        self.slides = np.concatenate(slides)
        self.center_ids = np.concatenate(centers)
        self.coords = np.concatenate(coords)
        if labelled_only:
            keep = self.labels >= 0
            for name in ("store_index", "tile_index", "labels", "slides", "center_ids", "coords"):
                setattr(self, name, getattr(self, name)[keep])
        self.cache_mb = float(cache_mb)
        self._stores: dict[int, PatchStore] = {}
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def num_classes(self, minimum: int = 2) -> int:
        """max(label) + 1 over labelled tiles (at least ``minimum``)."""
        lab = self.labels[self.labels >= 0]
        return max(minimum, int(lab.max()) + 1 if len(lab) else minimum)

    def _store(self, s: int) -> PatchStore:
        if self._pid != os.getpid():  # first use in this process (main or a worker): fresh handles
            self._stores, self._cache, self._cached_bytes, self._pid = {}, {}, 0, os.getpid()
        if s not in self._stores:
            self._stores[s] = PatchStore.open(self.paths[s])
        return self._stores[s]

    def _read(self, s: int, tiles: np.ndarray) -> np.ndarray:
        """Tiles of store ``s`` in the order asked for.

        Random access into a sharded JPEG store decodes far slower than a sequential read (measured
        in benchmarks/bench_train.py), so a store whose decoded size fits the remaining
        ``cache_mb`` budget of this process is read once, sequentially, and served from memory.
        """
        store = self._store(s)
        if s in self._cache:
            return self._cache[s][tiles]
        nbytes = int(np.prod(store.images.shape))
        if self._cached_bytes + nbytes <= self.cache_mb * 2**20:
            self._cache[s] = store.read(slice(None))
            self._cached_bytes += nbytes
            return self._cache[s][tiles]
        return store.read(tiles)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stores"], state["_cache"], state["_cached_bytes"], state["_pid"] = {}, {}, 0, None
        return state

    def _item(self, i: int, image: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.tensor(self.labels[i]),
            "slide": torch.tensor(self.slides[i]),
            "center": torch.tensor(self.center_ids[i]),
            "index": torch.tensor(self.tile_index[i]),
            "store": torch.tensor(self.store_index[i]),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        image = self._read(int(self.store_index[i]), np.array([self.tile_index[i]]))[0]
        return self._item(i, image)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = np.asarray(indices, np.int64)
        images: list[np.ndarray | None] = [None] * len(idx)
        for s in np.unique(self.store_index[idx]):
            pos = np.nonzero(self.store_index[idx] == s)[0]
            read = self._read(int(s), self.tile_index[idx[pos]])  # in the order asked for
            for k, p in enumerate(pos):
                images[p] = read[k]
        return [self._item(int(i), img) for i, img in zip(idx, images)]


class EpochBatchSampler(Sampler[list[int]]):
    """Global batches of an epoch from (seed, epoch); rank r gets slice r of each global batch.

    ``len()`` = number of global batches = ``n // batch_size`` (drop_last) — identical on every rank.
    With ``slide_ids`` given (``slide_balanced``), each batch draws ``batch_size // tiles_per_slide``
    slides (all slides when there are fewer) and splits the batch evenly among them, so every
    slide in a batch has ≥ ``tiles_per_slide`` tiles; tiles of a slide are visited in a shuffled
    cycle.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 slide_ids: np.ndarray | None = None, tiles_per_slide: int = 2) -> None:
        if batch_size < 1 or n < batch_size:
            raise ValueError(f"batch_size {batch_size} must be in [1, {n}] (the number of tiles)")
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} is not divisible by world size {world_size}")
        if slide_ids is not None and batch_size < tiles_per_slide:
            raise ValueError(f"slide-balanced batches need batch_size ≥ tiles_per_slide ({tiles_per_slide})")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.slide_ids = None if slide_ids is None else np.asarray(slide_ids)
        self.tiles_per_slide = tiles_per_slide
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next permutation."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """Epoch and seed: all the sampler needs to resume."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the epoch and seed of :meth:`state_dict`."""
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

    def __len__(self) -> int:
        return self.n // self.batch_size

    def global_batches(self) -> list[np.ndarray]:
        """All global batches of the current epoch (same on every rank)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        nb = len(self)
        if self.slide_ids is None:
            perm = rng.permutation(self.n)
            return [perm[b * self.batch_size : (b + 1) * self.batch_size] for b in range(nb)]
        slides = np.unique(self.slide_ids)
        pools = {s: rng.permutation(np.nonzero(self.slide_ids == s)[0]) for s in slides}
        cursor = {s: 0 for s in slides}
        m = min(len(slides), self.batch_size // self.tiles_per_slide)
        batches = []
        for _ in range(nb):
            chosen = rng.choice(slides, size=m, replace=False)
            counts = np.full(m, self.batch_size // m)
            counts[: self.batch_size % m] += 1
            batch = []
            for s, c in zip(chosen, counts):
                for _ in range(c):
                    if cursor[s] == len(pools[s]):
                        pools[s], cursor[s] = rng.permutation(pools[s]), 0
                    batch.append(pools[s][cursor[s]])
                    cursor[s] += 1
            batches.append(rng.permutation(np.asarray(batch, np.int64)))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch_size // self.world_size
        for batch in self.global_batches():
            yield batch[self.rank * local : (self.rank + 1) * local].tolist()


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: numpy/random seeds from torch's per-worker seed (reproducible)."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: TileDataset, sampler: Sampler, num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` driven by a batch sampler; workers open stores lazily."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,  # keeps each worker's store handles and tile cache across epochs
        multiprocessing_context="spawn" if num_workers > 0 and torch.cuda.is_initialized() else None,
    )
