"""stainshift.plots on synthetic runs: every figure is a real, non-trivial PNG written atomically."""
from __future__ import annotations

import os

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stainshift import plots
from stainshift.metrics import pipeline as pl
from test_metrics_pipeline import SOURCE_DICTS, _runs_embeddings, read_method, synthetic_runs

CFG = pl.EvalConfig(bootstrap=5, w2_max_samples=50)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = synthetic_runs(tmp_path_factory.mktemp("plots"))
    return root, pl.normalize_predictions(read_method(root, "baseline"))


def _png_ok(path: Path, min_colors: int = 20) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    im = np.asarray(Image.open(path).convert("RGB"))
    assert im.shape[0] > 100 and im.shape[1] > 100
    assert len(np.unique(im.reshape(-1, 3), axis=0)) >= min_colors  # not blank
    assert not list(path.parent.glob(f".{path.name}*"))  # no temp file left behind


def test_heatmap_and_roc(run, tmp_path):
    root, preds = run
    table = pl.cross_center(preds, "baseline", CFG, SOURCE_DICTS)
    _png_ok(plots.cross_center_heatmap(table, tmp_path / "h" / "heat.png", title="baseline"))
    raw = preds[pl.is_raw(preds)]
    _png_ok(plots.roc_curves(raw[~pl.mark_seen(raw)], tmp_path / "roc.png"))


def test_roc_multiclass_and_variant_plot(run, tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90) + np.eye(3)[y]
    p /= p.sum(1, keepdims=True)
    df = pd.DataFrame(dict(protocol="probe", source=np.repeat(["a", "b", "loco-c"], 30),
                           test=np.tile(np.repeat(["c", "d"], 15), 3), label=y, p0=p[:, 0], p1=p[:, 1], p2=p[:, 2]))
    _png_ok(plots.roc_curves(df, tmp_path / "roc3.png"))
    _, preds = run
    v = pd.concat([pl.variant_robustness(preds, "baseline", CFG, SOURCE_DICTS),
                   pl.variant_robustness(preds.assign(method="other"), "other", CFG, SOURCE_DICTS)])
    _png_ok(plots.variant_accuracy_plot(v, tmp_path / "var.png"))


@pytest.mark.parametrize("kind", ["pca", "tsne", "umap"])
def test_embedding_map(run, tmp_path, kind):
    root, _ = run
    emb = _runs_embeddings(root, "baseline")[("ca", 0)]
    f, m = pl.subsample_for_map(emb, 40, 0)
    assert len(m) == 40
    if kind == "umap":
        # the same call in a process with numba's JIT off: umap-learn's compile costs ~50 s per fresh
        # process (what the workflow pays once per evaluate job), interpreting 40 points ~10 s
        import subprocess
        import sys

        np.savez(tmp_path / "map.npz", f=f, center=np.asarray(m["center"], dtype=str),
                 label=np.asarray(m["label"], dtype=np.int64))
        code = ("import numpy as np; from stainshift import plots; d = np.load('map.npz'); "
                "plots.embedding_map(d['f'], d['center'], d['label'], 'umap.png', kind='umap')")
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "NUMBA_DISABLE_JIT": "1"}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _png_ok(tmp_path / "umap.png")
    else:
        _png_ok(plots.embedding_map(f, m["center"], m["label"], tmp_path / f"{kind}.png", kind=kind))
    with pytest.raises(ValueError):
        plots.embed_2d(f, "nope")


def test_restain_curve_plot_one_line_per_method_and_object_columns(tmp_path: Path) -> None:
    # the summarize stage concatenates tables; an empty one turns the number columns into objects
    rows = [pl.row(method=m, protocol="probe", source="each", test=f"{s:g}", metric=metric, kind="restain",
                   value=v - s / 10, ci_low=v - s / 10 - 0.05, ci_high=v - s / 10 + 0.05)
            for m, v in (("a", 0.9), ("b", 0.8)) for s in (0.0, 0.5, 1.0)
            for metric in ("balanced_accuracy", "accuracy", "auc")]
    rows += [pl.row(method=m, protocol="probe", source="each", test="area", metric="balanced_accuracy",
                    kind="restain_area", value=0.85) for m in ("a", "b")]
    summary = pd.concat([pl.frame(rows), pd.DataFrame(columns=pl.COLUMNS, dtype=object)], ignore_index=True)
    assert summary["value"].dtype == object
    out = plots.restain_curve_plot(summary, tmp_path / "curve.png")
    img = np.asarray(Image.open(out))
    assert img.shape[1] > 1000 and img.shape[0] > 300
    empty = plots.restain_curve_plot(pl.frame([]), tmp_path / "empty.png")  # no re-stained variants: says so
    assert empty.is_file()
