"""End-to-end (slow): external encoders through the tiny demo DAG, nothing trained.

One stainshift encoder, written by the test as a .pt2 program, a TorchScript file and a state dict
under torchvision's ResNet18 key names, is evaluated three times as `external` entries (frozen probe;
the TorchScript one also fully fine-tuned). The three give the in-memory model's features and the
same probe predictions; the report lists each with its file's sha256. (`pretrain.<method>.init` is
tested in test_train.py; the demo with external rows beside trained ones is in the issue's note.)
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from stainshift.embeddings import read_predictions
from stainshift.external import file_sha256
from stainshift.models import build_encoder
from stainshift.store import PatchStore
from stainshift.train import encode_images
from workflow_helpers import make_workdir, run_snakemake

pytestmark = pytest.mark.slow

SPEC = {"arch": "resnet18", "width": 0.25, "small_input": True}
EXTERNALS = ("ext_pt2", "ext_ts", "ext_tv")


def _torchvision_name(key: str) -> str:
    key = re.sub(r"^stem\.0\.", "conv1.", re.sub(r"^stem\.1\.", "bn1.", key))
    key = re.sub(r"^stages\.(\d)\.(\d+)\.down\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.", key)
    return re.sub(r"^stages\.(\d)\.", lambda m: f"layer{int(m[1]) + 1}.", key)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, torch.nn.Module, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("external_wf")
    torch.manual_seed(0)
    enc = build_encoder(SPEC).eval()
    x = torch.rand(2, 3, 32, 32)
    weights = tmp / "weights"
    weights.mkdir()
    files = {"ext_pt2": weights / "enc.pt2", "ext_ts": weights / "enc.ts", "ext_tv": weights / "resnet18_tv.pth"}
    torch.export.save(torch.export.export(enc, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}),
                      files["ext_pt2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(enc, x), files["ext_ts"])
    torch.save({_torchvision_name(k): v for k, v in enc.state_dict().items()}, files["ext_tv"])
    identity = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # the exported programs normalise inside
    from stainshift.models import MEAN, STD

    work = make_workdir(tmp / "work", {
        "pretrain": {"methods": [], "sources": ["center_a"]},
        "normalize": {"methods": ["reinhard"], "targets": {"k": 1}},
        "finetune": {"fusion": []},
        "external": [
            {"name": "ext_pt2", "file": str(files["ext_pt2"]), **identity},
            {"name": "ext_ts", "file": str(files["ext_ts"]), **identity, "finetune": "full"},
            {"name": "ext_tv", "file": str(files["ext_tv"]), "encoder": SPEC, "layout": "torchvision",
             "mean": list(MEAN), "std": list(STD)},
        ],
    })
    run_snakemake(work, "results/report/summary.md")
    return work, enc, files


def test_external_encoders_embed_like_the_in_memory_model(study) -> None:
    work, enc, files = study
    feats = {}
    for name in EXTERNALS:
        run = work / "results" / "models" / name / "center_a" / "seed0"
        saved = torch.load(run / "encoder.pt", weights_only=True)
        assert saved["spec"]["sha256"] == file_sha256(files[name]) and saved["state_dict"] == {}
        by_store = sorted((work / "results" / "embeddings" / name / "by_store").glob("*.csv"))
        manifest = pd.concat([pd.read_csv(p, dtype=str) for p in by_store], ignore_index=True)
        row = manifest[(manifest["split"] == "test") & (manifest["variant_method"] == "raw")].iloc[0]
        with h5py.File(work / row["path"]) as fh:
            feats[name] = fh["features"][:]
    store = PatchStore.open(work / row["source"])
    expected = encode_images(enc, store.read(np.arange(len(store))), torch.device("cpu"))
    for name, f in feats.items():
        np.testing.assert_allclose(f, expected, atol=1e-5, err_msg=name)


def test_frozen_probe_and_full_finetuning_predict_on_every_center(study) -> None:
    work, _, _ = study
    preds = {n: pd.concat([read_predictions(p) for p in sorted((work / "results" / "predictions" / n).glob("*.csv"))],
                          ignore_index=True) for n in EXTERNALS}
    assert all(set(p["source"]) == {"center_a"} for p in preds.values())
    assert set(preds["ext_pt2"]["protocol"]) == {"probe"}
    assert set(preds["ext_ts"]["protocol"]) == {"probe", "native"}  # finetune: full
    assert set(preds["ext_tv"]["test"]) == {"center_a", "center_b", "center_c"}
    np.testing.assert_allclose(preds["ext_pt2"]["p1"], preds["ext_tv"]["p1"], atol=1e-4)  # same features, same probe
    ts = preds["ext_ts"].assign(encoder_centers=lambda d: d["encoder_centers"].fillna(""))
    # a frozen external encoder learnt from none of the study's centers; fine-tuned, from the source's
    assert set(ts.loc[ts["protocol"] == "probe", "encoder_centers"]) == {""}
    assert set(ts.loc[ts["protocol"] == "native", "encoder_centers"]) == {"center_a"}


def test_report_lists_external_rows_and_their_files(study) -> None:
    work, _, files = study
    report = (work / "results" / "report" / "summary.md").read_text()
    headline = report.split("## Headline")[1].split("##")[0]
    for name in EXTERNALS:
        assert f"`{name}`" in headline
        assert f"`{name}` (external encoder, not trained here): " in report and file_sha256(files[name]) in report
