"""DDP: `torchrun` (gloo, CPU) over 2 processes, through the rule's own script
(workflow/scripts/pretrain.py), gives the same loss and weights as 1 process on the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from stainshift.train import load
from test_data import make_stores

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow" / "scripts" / "pretrain.py"

# SimCLR with a LayerNorm encoder (ViT) and the BN-free SimCLR v1 projector, views switched off so
# both runs see identical inputs; SGD so tiny float differences are not amplified (as Adam would).
CFG = {
    "encoder": {"arch": "vit_tiny", "image_size": 16, "patch": 8, "dim": 16, "depth": 1, "heads": 2},
    "image_size": 16, "epochs": 2, "batch_size": 8, "optimizer": "sgd", "lr": 0.5, "momentum": 0.0,
    "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0, "temperature": 0.1, "proj_dim": 8,
    "proj_hidden": 16, "seed": 0, "num_workers": 0, "device": "cpu", "grad_clip": None, "amp": False,
    "views": {"crop_scale": [1.0, 1.0], "jitter": "none", "blur_p": 0.0, "flip_p": 0.0, "rot90": False},
}


def run(cmd: list[str], out: Path, stores: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = [*cmd, str(SCRIPT), "--method", "simclr", "--out-dir", str(out), "--config-json", json.dumps(CFG),
            "--threads", "1", "--stores", *stores]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.timeout(300)
def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    stores = make_stores(tmp_path / "stores", n_slides=2, n_tiles=8)
    from stainshift.train import pretrain

    torch.set_num_threads(1)
    pretrain("simclr", stores, CFG, tmp_path / "one", progress=False)  # 1 process, in this one
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"],
        tmp_path / "two", stores)
    one = pd.read_csv(tmp_path / "one" / "metrics.csv")
    two = pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert len(one) == len(two) == 2
    assert two["loss"].tolist() == pytest.approx(one["loss"].tolist(), rel=1e-5)
    assert one["loss"].iloc[1] != one["loss"].iloc[0]  # the weights did move
    a, b = load(tmp_path / "one" / "encoder.pt")["state_dict"], load(tmp_path / "two" / "encoder.pt")["state_dict"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    assert not (tmp_path / "two" / "checkpoints" / "last.pt").exists()  # a finished run leaves no resume point
