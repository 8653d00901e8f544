"""Rule `pretrain`: pretrain one method on the training stores (launched by python or torchrun).

Usage (the rule's shell command):
    [torchrun --nproc_per_node=N] pretrain.py --method simclr --out-dir results/models/simclr \
        --config-json '{...merged method config...}' --stores results/tiles/a.zarr ...
Resumes from {out-dir}/checkpoints/last.pt when a previous run of the same config was killed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from stainshift.train import dist_info, pretrain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--config-json", required=True, help="merged method config (stainshift.train.method_config)")
    parser.add_argument("--stores", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rank = dist_info()[0]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    cfg = json.loads(args.config_json)
    logging.getLogger("stainshift.pretrain").info("method %s config: %s", args.method, json.dumps(cfg, sort_keys=True))
    pretrain(args.method, args.stores, cfg, args.out_dir, progress=sys.stderr.isatty())
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
