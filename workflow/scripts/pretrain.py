"""Rule `pretrain_run`: pretrain one run (method, source, seed) on the source's training stores
(launched by python, or by torchrun for several GPUs).

Usage (the rule's shell command):
    [torchrun --nproc_per_node=N] pretrain.py --method simclr --out-dir results/models/simclr/center_a/seed0 \
        --config-json '{...merged method config...}' --meta-json '{"source": "center_a", ...}' \
        --on-no-learning fail --stores results/tiles/a_train.zarr ...
Resumes from {out-dir}/checkpoints/last.pt when a previous run of the same config and code was killed.
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
    parser.add_argument("--meta-json", default="{}", help="run provenance: source, source_kind, centers, seed")
    parser.add_argument("--on-no-learning", choices=["fail", "flag"], default="fail")
    parser.add_argument("--stores", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rank = dist_info()[0]
    # stderr goes to the job's log and the console (the rule pipes it through tee)
    run = "/".join(str(json.loads(args.meta_json).get(k, "")) for k in ("source", "seed"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [pretrain {args.method}/{run} rank {rank}] %(levelname)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    cfg = json.loads(args.config_json)
    meta = json.loads(args.meta_json)
    log = logging.getLogger("stainshift.pretrain")
    log.info("method %s, run %s, config: %s", args.method, json.dumps(meta, sort_keys=True), json.dumps(cfg, sort_keys=True))
    log.info("training stores: %s", " ".join(args.stores))
    pretrain(args.method, args.stores, cfg, args.out_dir, meta=meta, on_no_learning=args.on_no_learning,
             progress=sys.stderr.isatty())
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
