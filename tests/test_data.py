"""TileDataset returns the stored pixels, labels and ids; samplers are deterministic and DDP-shardable."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stainshift.data import EpochBatchSampler, TileDataset, make_loader
from stainshift.store import write_store

torch.set_num_threads(1)


def make_stores(root: Path, n_slides: int = 3, n_tiles: int = 12, size: int = 16, seed: int = 0,
                centers: tuple[str, ...] = ("c0", "c1"), split: str = "train") -> list[str]:
    """Lossless (zstd) stores with random pixels and labels 0/1 (tile 0 of each store unlabelled)."""
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(n_slides):
        images = rng.integers(0, 256, (n_tiles, size, size, 3), dtype=np.uint8)
        label = rng.integers(0, 2, n_tiles)
        label[0] = -1
        path = root / f"{split}{s}.zarr"
        write_store(path, images, coords=np.stack([np.arange(n_tiles) * size, np.zeros(n_tiles)], 1),
                    tissue_fraction=np.ones(n_tiles), label=label, label_fraction=np.full(n_tiles, np.nan),
                    attrs={"slide_id": f"{split}{s}", "center": centers[s % len(centers)], "patient": f"p{s}",
                           "split": split, "patch_size": size}, codec="zstd")
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return make_stores(tmp_path_factory.mktemp("stores"))


def test_dataset_returns_stored_pixels_and_ids(stores: list[str]) -> None:
    from stainshift.store import PatchStore

    ds = TileDataset(stores)
    assert len(ds) == 36 and ds.slide_ids == ["train0", "train1", "train2"] and ds.centers == ["c0", "c1"]
    item = ds[13]  # store 1, tile 1
    ref = PatchStore.open(stores[1])
    assert torch.equal(item["image"], torch.from_numpy(ref.read(1)[0]).permute(2, 0, 1))
    assert int(item["label"]) == ref.label[1] and int(item["slide"]) == 1 and int(item["center"]) == 1
    assert int(item["index"]) == 1 and int(item["store"]) == 1
    batch = ds.__getitems__([30, 2, 13, 2])
    assert [int(b["index"]) for b in batch] == [6, 2, 1, 2]
    assert torch.equal(batch[2]["image"], item["image"])
    assert TileDataset(stores, labelled_only=True).labels.min() == 0
    assert len(TileDataset(stores, labelled_only=True)) == 33


@pytest.mark.parametrize("workers, cache_mb", [(0, 0.0), (2, 512.0)])
def test_loader_batches_match_store(stores: list[str], workers: int, cache_mb: float) -> None:
    from stainshift.store import PatchStore

    ds = TileDataset(stores, cache_mb=cache_mb)
    sampler = EpochBatchSampler(len(ds), 6, seed=3)
    refs = [PatchStore.open(p) for p in stores]
    seen = 0
    for batch, idx in zip(make_loader(ds, sampler, num_workers=workers), sampler):
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (6, 3, 16, 16)
        for k, i in enumerate(idx):
            s, t = ds.store_index[i], ds.tile_index[i]
            assert torch.equal(batch["image"][k], torch.from_numpy(refs[s].read(int(t))[0]).permute(2, 0, 1))
            assert int(batch["label"][k]) == refs[s].label[t]
        seen += 6
    assert seen == 36


def test_sampler_is_deterministic_and_shards_global_batches() -> None:
    full = EpochBatchSampler(40, 8, seed=1)
    full.set_epoch(2)
    again = EpochBatchSampler(40, 8, seed=1)
    again.set_epoch(2)
    assert list(full) == list(again)
    other = EpochBatchSampler(40, 8, seed=1)
    other.set_epoch(3)
    assert list(other) != list(full)
    ranks = [EpochBatchSampler(40, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    for glob, a, b in zip(full, *ranks):
        assert glob == a + b
    assert len(full) == 5 and sorted(i for b in full for i in b) == list(range(40))
    with pytest.raises(ValueError, match="divisible"):
        EpochBatchSampler(40, 7, world_size=2)


def test_slide_balanced_sampler_has_two_tiles_per_slide() -> None:
    slides = np.repeat(np.arange(10), [3, 5, 8, 2, 9, 4, 6, 7, 3, 13])
    sampler = EpochBatchSampler(len(slides), 16, seed=0, slide_ids=slides, tiles_per_slide=2)
    batches = list(sampler)
    assert len(batches) == len(slides) // 16
    for b in batches:
        assert len(b) == 16
        _, counts = np.unique(slides[b], return_counts=True)
        assert counts.min() >= 2
    # few slides: each slide gets a larger share
    few = EpochBatchSampler(30, 12, seed=0, slide_ids=np.repeat([0, 1, 2], 10))
    for b in few:
        assert sorted(np.unique(np.repeat([0, 1, 2], 10)[b], return_counts=True)[1]) == [4, 4, 4]
