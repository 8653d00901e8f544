"""Rule `pretrain_run`: pretrain one run (method, source, seed) on the source's training stores
(launched by python, or by torchrun for several GPUs).

Usage (the rule's shell command):
    [torchrun --nproc_per_node=N] pretrain.py --method simclr --out-dir results/models/simclr/center_a/seed0 \
        --config-json '{...merged method config...}' --meta-json '{"source": "center_a", ...}' \
        --on-no-learning fail --stores results/tiles/a_train.zarr ... --log-file results/logs/pretrain/....log
Resumes from {out-dir}/checkpoints/last.pt when a previous run of the same config and code was killed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from stainshift.joblog import job_logging
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
    parser.add_argument("--log-file", default=None,
                        help="the job's log (rank 0 writes it; stainshift.joblog); without it, the console only")
    args = parser.parse_args(argv)
    rank = dist_info()[0]
    meta_ids = json.loads(args.meta_json)
    job = f"pretrain_run {args.method}/{meta_ids.get('source', '')}/{meta_ids.get('seed', '')}"
    job_logging(args.log_file or "", job + (f" rank {rank}" if rank else ""),
                level=logging.INFO if rank == 0 else logging.WARNING, write_file=rank == 0 and bool(args.log_file))
    torch.set_num_threads(max(1, args.threads))
    cfg = json.loads(args.config_json)
    meta = json.loads(args.meta_json)
    log = logging.getLogger("stainshift.pretrain")
    log.info("method %s, run %s, config: %s", args.method, json.dumps(meta, sort_keys=True), json.dumps(cfg, sort_keys=True),
             extra={"console": False})
    log.info("training stores: %s", " ".join(args.stores))
    pretrain(args.method, args.stores, cfg, args.out_dir, meta=meta, on_no_learning=args.on_no_learning,
             progress=sys.stderr.isatty())
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
