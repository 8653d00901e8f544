"""Fine-tuning: the linear probe learns and picks the best validation epoch; heads round-trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stainshift.models import Classifier, build_encoder
from stainshift.train.finetune import (LinearProbe, choose_threshold, finetune_classifier, finetune_linear, head_module,
                                 head_payload, load_heads, probabilities, save_heads)
from stainshift.metrics.cross_center import balanced_accuracy
from test_data import make_stores

torch.set_num_threads(1)


def blobs(n: int, seed: int, shift: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 5)).astype(np.float32) + 100.0  # large offset: standardisation matters
    x[np.arange(n), y] += shift
    return x, y


def test_linear_probe_learns_and_selects_best_epoch(tmp_path: Path) -> None:
    tx, ty = blobs(300, 0)
    vx, vy = blobs(150, 1)
    ty[:5] = -1  # unlabelled rows are ignored
    probe, rows = finetune_linear(tx, ty, vx, vy, 3, {"epochs": 15, "lr": 0.05, "batch_size": 64, "seed": 0})
    best = max(rows, key=lambda r: r["val_metric"])
    assert best.get("best") and len(rows) == 15
    pred = probabilities(probe, vx, torch.device("cpu"), from_features=True).argmax(1)
    assert balanced_accuracy(vy, pred) == pytest.approx(best["val_metric"])
    assert best["val_metric"] > 0.85
    save_heads(tmp_path / "heads.pt", {"probe": head_payload(probe, mode="linear", num_classes=3, source="all")})
    payload = load_heads(tmp_path / "heads.pt")["probe"]
    module = head_module(payload)
    assert payload["mode"] == "linear" and isinstance(module, LinearProbe) and payload["source"] == "all"
    assert torch.equal(module(torch.as_tensor(vx)), probe(torch.as_tensor(vx)))


def test_balanced_accuracy() -> None:
    assert balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == 0.5
    assert np.isnan(balanced_accuracy(np.array([]), np.array([])))


def test_full_finetune_round_trip(tmp_path: Path) -> None:
    train = make_stores(tmp_path / "tr", n_slides=2, n_tiles=8)
    val = make_stores(tmp_path / "va", n_slides=1, n_tiles=8, seed=1, split="val")
    torch.manual_seed(0)
    enc = build_encoder({"arch": "resnet18", "widths": [4, 4, 8, 8, 16], "small_input": True})
    model, rows = finetune_classifier(Classifier(enc, 2), train, val,
                                      {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "class_weight": "balanced"},
                                      torch.device("cpu"))
    assert len(rows) == 2 and any(r.get("best") for r in rows)
    save_heads(tmp_path / "heads.pt", {"native": head_payload(model, mode="full", num_classes=2)})
    payload = load_heads(tmp_path / "heads.pt")["native"]
    mode, module = payload["mode"], head_module(payload)
    tiles = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    p = probabilities(module, tiles, torch.device("cpu"), from_features=False)
    assert mode == "full" and p.shape == (3, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(p, probabilities(model, tiles, torch.device("cpu"), from_features=False), atol=1e-6)


def test_choose_threshold_maximises_balanced_accuracy() -> None:
    # scores shifted upwards: 0.5 calls everything positive, the best cut lies between 0.7 and 0.8
    y = np.array([0, 0, 0, 0, 1, 1, -1])
    p1 = np.array([0.6, 0.65, 0.7, 0.7, 0.8, 0.9, 0.1])
    t = choose_threshold(y, p1)
    assert 0.7 < t <= 0.8
    assert balanced_accuracy(y[:6], (p1[:6] >= t).astype(int)) == 1.0
    assert choose_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5  # one class: undefined -> 0.5
