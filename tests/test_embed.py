"""Embeddings HDF5 layout and the predictions table (stainshift.embeddings)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from stainshift.embeddings import (PREDICTION_COLUMNS, RAW, embed_store, embedding_path, prediction_frame,
                                   read_embeddings, read_predictions, write_embeddings, write_predictions)
from stainshift.models import build_encoder
from stainshift.store import PatchStore
from test_data import make_stores

torch.set_num_threads(1)


def test_embed_store_matches_encoder_and_copies_attrs(tmp_path: Path) -> None:
    store = make_stores(tmp_path, n_slides=1, n_tiles=10)[0]
    torch.manual_seed(0)
    enc = build_encoder({"arch": "resnet18", "width": 0.125, "small_input": True}).eval()
    out = tmp_path / "emb" / "train0.h5"
    info = embed_store(enc, store, out, attrs={"method": "simclr", "store": "train0"}, batch_size=4)
    data = read_embeddings(out)
    tiles = PatchStore.open(store).read(slice(None))
    with torch.no_grad():
        ref = enc(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255).numpy()
    assert data["features"].dtype == np.float32 and data["features"].shape == (10, enc.out_dim)
    np.testing.assert_allclose(data["features"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data["label"], PatchStore.open(store).label)
    np.testing.assert_array_equal(data["coords"], PatchStore.open(store).coords)
    np.testing.assert_array_equal(data["index"], np.arange(10))
    a = data["attrs"]
    assert a["method"] == "simclr" and a["slide_id"] == "train0" and a["center"] == "c0" and a["split"] == "train"
    assert a["variant_method"] == RAW and a["feature_dim"] == enc.out_dim and info["n"] == 10
    assert [p.name for p in out.parent.iterdir()] == ["train0.h5"]  # no temp file left


def test_write_embeddings_validates_and_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with pytest.raises(ValueError, match="'label' has 2 rows"):
        write_embeddings(path, np.zeros((3, 4)), coords=np.zeros((3, 2)), label=np.zeros(2), index=np.arange(3), attrs={})
    assert not path.exists() and not list(tmp_path.iterdir())
    write_embeddings(path, np.ones((3, 4)), coords=np.zeros((3, 2)), label=np.zeros(3), index=np.arange(3),
                     attrs={"method": "m", "variant_method": "macenko", "variant_target": "t1"})
    with h5py.File(path) as fh:
        assert set(fh) == {"features", "coords", "label", "index"} and fh.attrs["variant_target"] == "t1"


def test_paths_and_predictions_table(tmp_path: Path) -> None:
    assert embedding_path("E/stores", "a_test") == "E/stores/a_test.h5"
    assert embedding_path("E/stores", "a_test", "macenko", "t3") == "E/stores/variants/a_test/macenko/t3.h5"
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    meta = {"method": "simclr", "source": "loco-center_a", "source_kind": "loco", "seed": 1, "protocol": "probe",
            "encoder_centers": "center_b+center_c", "head_centers": "center_b+center_c", "store": "a_test",
            "slide_id": "a_test", "test": "center_a", "split": "test", "variant_method": "reinhard",
            "variant_target": "007"}
    df = prediction_frame(probs, meta=meta, index=np.array([4, 5]), label=np.array([1, -1]), threshold=0.4)
    assert list(df.columns) == PREDICTION_COLUMNS + ["p0", "p1", "pred", "threshold"]
    assert df["pred"].tolist() == [1, 0] and df["patient"].tolist() == ["a_test"] * 2  # patient falls back to slide
    raw = prediction_frame(probs, meta={**meta, "variant_method": None, "variant_target": None, "patient": "p9"},
                           index=np.array([0, 1]), label=np.array([0, 0]))
    path = write_predictions(tmp_path / "p" / "simclr.csv", [df, raw])
    back = read_predictions(path)
    assert len(back) == 4 and back["variant_target"].tolist()[:2] == ["007", "007"]
    assert back["variant_method"].tolist()[2:] == [RAW, RAW] and back["patient"].tolist()[2:] == ["p9", "p9"]
    assert back["threshold"].tolist()[:2] == [0.4, 0.4] and back["threshold"].isna().tolist()[2:] == [True, True]
    assert back["encoder_centers"].iloc[0] == "center_b+center_c" and back["seed"].iloc[0] == 1
    np.testing.assert_allclose(back[["p0", "p1"]].to_numpy()[:2], probs, rtol=1e-6)
    with pytest.raises(KeyError, match="protocol"):
        prediction_frame(probs, meta={k: v for k, v in meta.items() if k != "protocol"}, index=np.arange(2),
                         label=np.zeros(2))
