"""Fine-tuning and prediction of one run (method, source, seed): the heads and the predictions table.

Every run is scored under two protocols (:data:`stainshift.embeddings.PROTOCOLS`):

- ``probe`` — the common linear probe (every method): standardised frozen features of the
  source's training stores (from the ``embed`` rule) → a linear layer (:func:`finetune_linear`);
- ``native`` — the method's own seed downstream: ``end_to_end`` = the classifier a supervised
  method trained during pretraining (seed 000: baseline, stain_embed), unchanged; ``fusion`` =
  full fine-tuning of a classifier on seed 002's fusion encoder (:func:`finetune_classifier`);
  ``full`` = full fine-tuning of encoder + linear head (external encoders with ``finetune: full``).

Both choose their epoch on the source's validation stores, and for binary tasks a decision
threshold on P(class 1) there too (:func:`choose_threshold`). The heads of a run are one file
``heads.pt`` ({protocol: payload}, :func:`save_heads` / :func:`load_heads`); :func:`predict_run`
writes the rows of the predictions table documented in :mod:`stainshift.embeddings`.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from stainshift.cropsets import tile_groups
from stainshift.data import EpochBatchSampler, TileDataset, make_loader
from stainshift.embeddings import RAW, prediction_frame, read_embeddings
from stainshift.methods.losses import balanced_class_weights
from stainshift.metrics.cross_center import accuracy, balanced_accuracy
from stainshift.models import Classifier, build_encoder, build_head
from stainshift.store import PatchStore
from stainshift.train.checkpoint import atomic_save, load, load_encoder
from stainshift.train.predict import encode_images
from stainshift.train.runtime import seed_everything

log = logging.getLogger("stainshift.train.finetune")

SELECT_METRICS = {"balanced_accuracy": balanced_accuracy, "accuracy": accuracy}
DOWNSTREAMS = ("end_to_end", "fusion", "full")


class LinearProbe(nn.Module):
    """Standardise features with the training mean/std, then a linear layer."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """linear((x − mean) / std): logits from standardised features."""
        return self.linear((x - self.mean) / self.std)


def choose_threshold(y: np.ndarray, p1: np.ndarray) -> float:
    """Decision threshold t on P(class 1) maximising balanced accuracy of [p1 ≥ t] on (y, p1) —
    chosen on the source's validation split, so a head whose scores drift between centers is also
    scored at its own operating point. Candidates: midpoints between sorted unique scores (and
    0.5); ties → the candidate closest to 0.5. 0.5 when y has a single class."""
    y = np.asarray(y)
    p1 = np.asarray(p1, dtype=np.float64)
    keep = y >= 0
    y, p1 = y[keep], p1[keep]
    if np.unique(y).size < 2:
        return 0.5
    u = np.unique(p1)
    cands = np.unique(np.concatenate([[0.5], (u[1:] + u[:-1]) / 2 if u.size > 1 else u]))
    scores = np.array([balanced_accuracy(y, (p1 >= t).astype(np.int64)) for t in cands])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


@torch.no_grad()
def probabilities(module: nn.Module, inputs: np.ndarray, device: torch.device, *, from_features: bool) -> np.ndarray:
    """Softmax class probabilities (N, C) from features (linear probe) or uint8 tiles (full model)."""
    if from_features:
        logits = module(torch.as_tensor(inputs, dtype=torch.float32, device=device)).cpu()
    else:
        logits = torch.as_tensor(encode_images(module, inputs, device))
    return torch.softmax(logits.float(), 1).numpy()


# ---------------------------------------------------------------------------------------------
# training the heads
# ---------------------------------------------------------------------------------------------
def finetune_linear(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    num_classes: int, cfg: Mapping[str, Any]) -> tuple[LinearProbe, list[dict[str, Any]]]:
    """Linear probe on frozen features: Adam on standardised features, best epoch by ``cfg['select']``.

    cfg keys: ``epochs``, ``lr``, ``weight_decay``, ``batch_size``, ``seed``, ``select``
    (balanced_accuracy | accuracy), ``class_weight`` ("balanced" or null). Unlabelled rows (−1)
    are dropped; with no labelled validation rows the training metric selects the epoch (logged).
    Returns the best probe and the per-epoch rows.
    """
    seed_everything(int(cfg.get("seed", 0)))
    tr = train_y >= 0
    va = val_y >= 0
    x, y = torch.as_tensor(train_x[tr]), torch.as_tensor(train_y[tr])
    if len(y) == 0:
        raise ValueError("finetune_linear: no labelled training tiles")
    vx, vy = torch.as_tensor(val_x[va]), val_y[va]
    use_train = len(vy) == 0
    if use_train:
        log.warning("no labelled validation tiles: selecting the epoch on the training metric")
    probe = LinearProbe(x.shape[1], num_classes)
    probe.mean.copy_(x.mean(0))
    probe.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    weight = balanced_class_weights(torch.bincount(y, minlength=num_classes), num_classes) if cfg.get("class_weight") == "balanced" else None
    opt = torch.optim.Adam(probe.parameters(), lr=float(cfg.get("lr", 1e-3)), weight_decay=float(cfg.get("weight_decay", 0.0)))
    metric = SELECT_METRICS[cfg.get("select", "balanced_accuracy")]
    bs = int(cfg.get("batch_size", 256))
    best_state, best_score, rows = None, -np.inf, []
    gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    for epoch in range(int(cfg.get("epochs", 50))):
        probe.train()
        perm = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), bs):
            idx = perm[start:start + bs]
            loss = F.cross_entropy(probe(x[idx]), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        probe.eval()
        with torch.no_grad():
            if use_train:
                score = metric(y.numpy(), probe(x).argmax(1).numpy())
            else:
                score = metric(vy, probe(vx).argmax(1).numpy())
        rows.append({"epoch": epoch + 1, "train_loss": total / len(y), "val_metric": score})
        if score > best_score:
            best_score, best_state = score, copy.deepcopy(probe.state_dict())
            rows[-1]["best"] = True
    probe.load_state_dict(best_state)
    return probe.eval(), rows


def stack_tiles(stores: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every labelled tile (uint8 (N, S, S, 3)) and its label from ``stores``."""
    ds = TileDataset(stores, labelled_only=True)
    if len(ds) == 0:
        return np.zeros((0, ds.tile_size, ds.tile_size, 3), np.uint8), np.zeros(0, np.int64)
    items = ds.__getitems__(range(len(ds)))
    return np.stack([it["image"].permute(1, 2, 0).numpy() for it in items]), ds.labels.copy()


def finetune_classifier(model: Classifier, train_stores: Sequence[str], val_stores: Sequence[str],
                        cfg: Mapping[str, Any], device: torch.device) -> tuple[Classifier, list[dict[str, Any]]]:
    """Full fine-tuning of ``model``'s trainable parameters (encoder + head; for seed 002's fusion
    encoder: E_s + head, E_g frozen) with CE and seed 000's augmentations; best epoch on val.

    cfg keys: ``epochs``, ``lr``, ``weight_decay``, ``batch_size``, ``seed``, ``select``,
    ``class_weight``, ``num_workers``, ``views`` (BaselineAug kwargs).
    """
    from stainshift.augment import BaselineAug

    seed_everything(int(cfg.get("seed", 0)))
    train = TileDataset(train_stores, labelled_only=True)
    model = model.to(device)
    num_classes = int(model.head.spec["num_classes"])
    aug = BaselineAug(train.tile_size, **(cfg.get("views") or {}))
    bs = min(int(cfg.get("batch_size", 64)), len(train))
    sampler = EpochBatchSampler(len(train), bs, seed=int(cfg.get("seed", 0)))
    loader = make_loader(train, sampler, int(cfg.get("num_workers", 0)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=float(cfg.get("lr", 1e-4)), weight_decay=float(cfg.get("weight_decay", 0.0)))
    weight = None
    if cfg.get("class_weight") == "balanced":
        labels = torch.as_tensor(train.labels)
        weight = balanced_class_weights(torch.bincount(labels[labels >= 0], minlength=num_classes), num_classes).to(device)
    vimg, vlab = stack_tiles(val_stores) if val_stores else (None, None)
    if vimg is None or len(vimg) == 0:
        log.warning("no labelled validation tiles: selecting the epoch on the training metric")
        vimg, vlab = stack_tiles(train_stores)
    metric = SELECT_METRICS[cfg.get("select", "balanced_accuracy")]
    best_state, best_score, rows = None, -np.inf, []
    for epoch in range(int(cfg.get("epochs", 5))):
        sampler.set_epoch(epoch)
        model.train()
        total, n = 0.0, 0
        for batch in loader:
            x = aug(batch["image"].to(device))
            loss = F.cross_entropy(model(x), batch["label"].to(device), weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            n += len(x)
        score = metric(vlab, encode_images(model, vimg, device).argmax(1))
        rows.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_metric": score})
        log.info("fine-tuning epoch %d/%d: train loss %.4f, val %s %.4f", epoch + 1, int(cfg.get("epochs", 5)),
                 rows[-1]["train_loss"], cfg.get("select", "balanced_accuracy"), score)
        if score > best_score:
            best_score, best_state = score, copy.deepcopy(model.state_dict())
            rows[-1]["best"] = True
    model.load_state_dict(best_state)
    return model.eval(), rows


def load_native_classifier(encoder_path: str | os.PathLike, device: torch.device | str = "cpu") -> Classifier:
    """The end-to-end classifier a supervised method trained during pretraining (seed 000's own
    downstream): the encoder of ``encoder.pt`` with its saved ``native_head``."""
    state = load(encoder_path)
    if "native_head" not in state:
        raise ValueError(f"{encoder_path}: the method '{state.get('method')}' trained no classifier head")
    encoder = load_encoder(encoder_path, device)
    head = build_head(state["native_head"]["spec"])
    head.load_state_dict(state["native_head"]["state_dict"])
    return Classifier(encoder, int(state["native_head"]["spec"]["num_classes"]), head=head).to(device).eval()


# ---------------------------------------------------------------------------------------------
# the heads file
# ---------------------------------------------------------------------------------------------
def head_payload(module: nn.Module, *, mode: str, num_classes: int, **meta: Any) -> dict[str, Any]:
    """One head as plain data: linear → the probe on frozen features (``in_dim``, state); full → a
    :class:`~stainshift.models.Classifier` on images (encoder spec, head spec, state)."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload: dict[str, Any] = {"mode": mode, "num_classes": int(num_classes), "state_dict": state, **meta}
    if mode == "linear":
        payload["in_dim"] = int(module.linear.in_features)
    elif mode == "full":
        payload["encoder_spec"] = module.encoder.spec
        payload["head_spec"] = module.head.spec
    else:
        raise ValueError(f"unknown head mode {mode!r} (expected 'linear' or 'full')")
    return payload


def head_module(payload: Mapping[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the module of a head payload (eval mode, on ``device``)."""
    mode = payload.get("mode")
    if mode == "linear":
        module: nn.Module = LinearProbe(int(payload["in_dim"]), int(payload["num_classes"]))
    elif mode == "full":
        module = Classifier(build_encoder(payload["encoder_spec"]), int(payload["num_classes"]),
                            head=build_head(payload["head_spec"]))
    else:
        raise ValueError(f"unknown head mode {mode!r} (expected 'linear' or 'full')")
    module.load_state_dict(payload["state_dict"])
    return module.to(device).eval()


def save_heads(path: str | os.PathLike, heads: Mapping[str, Mapping[str, Any]]) -> None:
    """Write a run's ``heads.pt``: {protocol: head payload} (torch, atomic)."""
    atomic_save(dict(heads), path)


def load_heads(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{protocol: head payload} of a ``heads.pt`` (``weights_only=True``)."""
    heads = load(path)
    if not isinstance(heads, dict) or not heads or not all("mode" in h for h in heads.values()):
        raise ValueError(f"{path}: not a heads file ({{protocol: head payload}} expected)")
    return heads


# ---------------------------------------------------------------------------------------------
# one run: probe + native heads, then predictions
# ---------------------------------------------------------------------------------------------
def raw_embeddings(manifest: pd.DataFrame, stores: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked features and labels of the raw (unnormalized) embeddings of ``stores``."""
    raw = manifest[manifest["variant_method"] == RAW].set_index("store")
    missing = [s for s in stores if s not in raw.index]
    if missing:
        raise ValueError(f"no embeddings of stores {missing} in the run's manifest")
    parts = [read_embeddings(raw.loc[s, "path"]) for s in stores]
    if not parts:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    return np.concatenate([e["features"] for e in parts]), np.concatenate([e["label"] for e in parts])


def fit_probe(manifest: pd.DataFrame, train_stores: Sequence[str], val_stores: Sequence[str],
              cfg: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The probe head of a run (payload) and its per-epoch rows, from the run's embeddings."""
    if not train_stores:
        raise ValueError("the source has no training stores")
    tx, ty = raw_embeddings(manifest, train_stores)
    vx, vy = raw_embeddings(manifest, val_stores) if val_stores else (np.zeros((0, tx.shape[1]), np.float32),
                                                                        np.zeros(0, np.int64))
    labelled = ty[ty >= 0]
    if labelled.size == 0:
        raise ValueError(f"the training stores {list(train_stores)} have no labelled tiles")
    num_classes = int(cfg.get("num_classes") or max(2, int(labelled.max()) + 1))
    module, rows = finetune_linear(tx, ty, vx, vy, num_classes, cfg)
    threshold = float("nan")
    if num_classes == 2:
        sx, sy = (vx, vy) if (vy >= 0).any() else (tx, ty)
        threshold = choose_threshold(sy, probabilities(module, sx, torch.device("cpu"), from_features=True)[:, 1])
    best = max(rows, key=lambda r: (r["val_metric"] if np.isfinite(r["val_metric"]) else -np.inf))
    payload = head_payload(module, mode="linear", num_classes=num_classes, threshold=threshold,
                           best_epoch=int(best["epoch"]), val_metric=float(best["val_metric"]),
                           select=cfg.get("select", "balanced_accuracy"))
    return payload, rows


def fit_native(downstream: str, encoder_path: str | os.PathLike, train_stores: Sequence[str],
               val_stores: Sequence[str], cfg: Mapping[str, Any], device: torch.device,
               seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The native head of a run (payload) and its per-epoch rows: ``end_to_end`` (the pretraining
    classifier), ``fusion`` (seed 002 Eqs. 7–9, settings ``cfg['full']``, E_s init
    ``cfg['fusion_init']``) or ``full`` (encoder + linear head fine-tuned, settings ``cfg['full']``).
    ``train_stores`` / ``val_stores`` are store paths."""
    from stainshift.methods.fusion import build_fusion_encoder

    rows: list[dict[str, Any]] = []
    num_classes = int(load(encoder_path).get("num_classes") or cfg.get("num_classes")
                      or TileDataset(train_stores, labelled_only=True).num_classes())
    full = {**(cfg.get("full") or {}), "seed": seed, "select": cfg.get("select", "balanced_accuracy"),
            "class_weight": cfg.get("class_weight")}
    if downstream == "end_to_end":
        model = load_native_classifier(encoder_path, device)
    elif downstream == "fusion":
        seed_everything(seed)
        fused = build_fusion_encoder(load_encoder(encoder_path, device), init=str(cfg.get("fusion_init", "random")),
                                     seed=seed)
        model, rows = finetune_classifier(Classifier(fused, num_classes), train_stores, val_stores, full, device)
    elif downstream == "full":
        seed_everything(seed)
        model, rows = finetune_classifier(Classifier(load_encoder(encoder_path, device), num_classes), train_stores,
                                          val_stores, full, device)
    else:
        raise ValueError(f"unknown native downstream {downstream!r} (expected one of {DOWNSTREAMS})")
    vimg, vlab = stack_tiles(val_stores) if val_stores else stack_tiles(train_stores)
    probs = probabilities(model, vimg, device, from_features=False)
    val = balanced_accuracy(vlab, probs.argmax(1)) if len(vlab) else float("nan")
    threshold = choose_threshold(vlab, probs[:, 1]) if num_classes == 2 else float("nan")
    payload = head_payload(model.cpu(), mode="full", num_classes=num_classes, downstream=downstream,
                           threshold=threshold, val_metric=float(val), select="balanced_accuracy")
    return payload, rows or [{"epoch": 0, "val_metric": val}]


def predict_run(heads: Mapping[str, Mapping[str, Any]], manifest: pd.DataFrame, meta: Mapping[str, Any],
                device: torch.device, test_split: str = "test") -> list[pd.DataFrame]:
    """Prediction rows of every head on every test store and test variant of the run's manifest.

    Probes read the embeddings; full classifiers re-run on the tiles. Each row carries the run's
    provenance (``meta``: method, source, source_kind, seed, centers) and the head's
    ``head_centers`` and ``encoder_centers`` (default: the run's centers; empty for a frozen
    external encoder, which saw none of the study's centers as far as stainshift knows), and
    per-tile slide / patient ids (crop sets: the crop's source slide)."""
    tests = manifest[manifest["split"] == test_split]
    if tests.empty:
        log.warning("no stores of split '%s' in the run's manifest: no predictions", test_split)
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for store in tests["store"].unique():
        raw = tests[(tests["store"] == store) & (tests["variant_method"] == RAW)]
        if raw.empty:
            raise ValueError(f"test store {store} has variants but no raw embeddings in the run's manifest")
        st = PatchStore.open(raw["source"].iloc[0])
        slides, patients = tile_groups(st.attrs, len(st))
        groups[store] = (np.asarray(slides, dtype=object), np.asarray(patients, dtype=object))
    frames = []
    for protocol, payload in heads.items():
        module = head_module(payload, device)
        for row in tests.itertuples(index=False):
            emb = read_embeddings(row.path)
            idx = np.asarray(emb["index"])
            if payload["mode"] == "linear":
                probs = probabilities(module, emb["features"], device, from_features=True)
            else:
                probs = probabilities(module, PatchStore.open(row.source).read(idx), device, from_features=False)
            frame = prediction_frame(
                probs, index=idx, label=emb["label"], threshold=float(payload.get("threshold", np.nan)),
                meta={**meta, "protocol": protocol, "encoder_centers": payload.get("encoder_centers", meta["centers"]),
                      "head_centers": payload.get("head_centers", meta["centers"]), "store": row.store,
                      "test": row.center, "split": row.split, "variant_method": row.variant_method,
                      "variant_target": row.variant_target})
            frame["slide_id"], frame["patient"] = groups[row.store][0][idx], groups[row.store][1][idx]
            frames.append(frame)
        log.info("%s head (%s): %d test stores and variants scored", protocol, payload["mode"], len(tests))
    return frames
