"""Training-core benchmark: DataLoader tiles/s (0/1/2 workers) and training images/s per method.

    python benchmarks/bench_train.py                       # CPU, demo method configs, 64 px tiles
    python benchmarks/bench_train.py --device cuda --tile-size 224 --config seed   # seed configs on a GPU

Loader: a JPEG (q90) patch store of smooth synthetic H&E-like tiles, read in random batches through
TileDataset + EpochBatchSampler, as the training loop does. Training: each method's merged config
(``--config demo`` = config/config.yaml's pretrain section, ``seed`` = the seed papers' defaults)
on random uint8 batches; images/s counts input tiles (both views of a tile count once); on CUDA also
the peak GPU memory with AMP. Writes a JSON with every number to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]


def smooth_tiles(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Tiles with H&E-like colours and blob texture (JPEG-compressible like tissue)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size // 16), max(2, size // 16), generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    pink, purple = torch.tensor([0.93, 0.6, 0.8]).view(1, 3, 1, 1), torch.tensor([0.45, 0.25, 0.6]).view(1, 3, 1, 1)
    t = img[:, :1].clamp(0, 1)
    rgb = pink * (1 - t) + purple * t + 0.05 * (img - 0.5)
    return (rgb.clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()


def bench_loader(tmp: Path, n: int, size: int, batch: int, workers_list: list[int], epochs: int = 2,
                 cache_mb: float = 512.0) -> list[dict]:
    from stainshift.data import EpochBatchSampler, TileDataset, make_loader
    from stainshift.store import write_store

    path = tmp / "bench.zarr"
    write_store(path, smooth_tiles(n, size), coords=np.zeros((n, 2)), tissue_fraction=np.ones(n),
                label=np.zeros(n), label_fraction=np.zeros(n),
                attrs={"slide_id": "bench", "center": "c", "split": "train", "patch_size": size}, codec="jpeg")
    ds = TileDataset([path], cache_mb=cache_mb)
    rows = []
    for workers in workers_list:
        sampler = EpochBatchSampler(len(ds), batch, seed=0)
        loader = make_loader(ds, sampler, num_workers=workers)
        count, t0 = 0, None
        for epoch in range(epochs + 1):  # epoch 0 warms up (worker start-up is timed separately)
            sampler.set_epoch(epoch)
            start = time.perf_counter()
            for b in loader:
                count += len(b["image"]) if epoch else 0
            if epoch == 0:
                warm = time.perf_counter() - start
                t0 = time.perf_counter()
        seconds = time.perf_counter() - t0
        rows.append({"workers": workers, "cache_mb": cache_mb, "tiles": count, "seconds": round(seconds, 3),
                     "tiles_per_s": round(count / seconds, 1), "first_epoch_s": round(warm, 3)})
        print(f"loader workers={workers} cache_mb={cache_mb:g}: {count / seconds:.0f} tiles/s ({size}px JPEG, "
              f"batch {batch})", flush=True)
    return rows


def method_cfgs(which: str, methods: list[str]) -> dict[str, dict]:
    from stainshift.train import method_config

    pre = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["pretrain"] if which == "demo" else {}
    return {m: method_config(pre, m) for m in methods}


def bench_method(name: str, cfg: dict, size: int, device: torch.device, steps: int, warmup: int,
                 batch: int | None) -> dict:
    from stainshift.methods import StepContext, build_method
    from stainshift.train import seed_everything
    from stainshift.train.loop import _train_step

    cfg = dict(cfg, image_size=size)
    enc = dict(cfg["encoder"]) if isinstance(cfg["encoder"], dict) else {"arch": cfg["encoder"]}
    if enc["arch"].startswith("vit"):
        enc["image_size"] = size
    cfg["encoder"] = enc
    bs = int(batch or cfg["batch_size"])
    seed_everything(0)
    method = build_method(name, cfg, 2).to(device)
    cuda = device.type == "cuda"
    if cuda:
        method.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats()
    built = method.configure_optimizers(steps + warmup, 1)
    opts = {k: v[0] for k, v in built.items()}
    ctx = StepContext(device=device, amp=cuda and cfg.get("amp", True), optimizers=opts,
                      schedulers={k: v[1] for k, v in built.items() if v[1] is not None},
                      scaler=torch.amp.GradScaler(device.type, enabled=cuda and cfg.get("amp", True)),
                      params={k: [p for g in o.param_groups for p in g["params"]] for k, o in opts.items()},
                      grad_clip=cfg.get("grad_clip"))
    g = torch.Generator().manual_seed(0)
    slides = torch.arange(bs) % max(1, bs // 4)
    batch_t = {"image": smooth_tiles(bs, size), "label": torch.randint(0, 2, (bs,), generator=g),
               "slide": slides, "center": slides % 3, "index": torch.arange(bs), "store": slides}
    batch_t["image"] = torch.from_numpy(batch_t["image"]).permute(0, 3, 1, 2).contiguous()
    batch_t = {k: v.to(device) for k, v in batch_t.items()}
    method.train()
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        _train_step(method, method, batch_t, ctx)
        ctx.step += 1
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = {"method": name, "encoder": enc, "batch_size": bs, "tile_size": size, "steps": steps,
           "seconds": round(seconds, 3), "images_per_s": round(steps * bs / seconds, 1),
           "params_M": round(sum(p.numel() for p in method.parameters()) / 1e6, 3)}
    if cuda:
        row["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["amp"] = bool(ctx.amp)
    print(f"train {name}: {row['images_per_s']} images/s (batch {bs}, {size}px, {enc['arch']}, {device})"
          + (f", peak {row['peak_gpu_mem_mb']} MB" if cuda else ""), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--tile-size", type=int, default=64, help="training tile size (demo: 64)")
    parser.add_argument("--loader-tile-size", type=int, default=224)
    parser.add_argument("--loader-tiles", type=int, default=1024)
    parser.add_argument("--loader-batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", choices=["demo", "seed"], default="demo")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--batch-size", type=int, default=None, help="override every method's batch size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out", default="bench_out/bench_train.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import stainshift.methods as registry

    methods = args.methods or [m for m in registry.available_methods() if not m.startswith("_")]
    device = torch.device(args.device)
    result = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": args.threads, "config": args.config}
    if not args.skip_loader:
        with tempfile.TemporaryDirectory() as tmp:
            result["loader"] = [row for cache in (0.0, 512.0) for row in bench_loader(
                Path(tmp), args.loader_tiles, args.loader_tile_size, args.loader_batch, args.workers, cache_mb=cache)]
    result["train"] = [] if args.skip_train else [bench_method(m, c, args.tile_size, device, args.steps, args.warmup, args.batch_size)
                       for m, c in method_cfgs(args.config, methods).items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
