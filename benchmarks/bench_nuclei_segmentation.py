"""Seed 004 nuclei segmentation on real H&E: U-Net vs the hematoxylin-threshold baseline.

One command (from the repo root):

    .venv/bin/python benchmarks/bench_nuclei_segmentation.py     # [--base 16] [--epochs 6] [--json out.json]

Data: ``../shared/data/nuclei_hgsc`` (two 1500² high-grade serous ovarian carcinoma crops with
nucleus instance masks; PROVENANCE.md). Split: the U-Net trains on the top ``--train-rows``
(default half: rows 0–749) of ``hgsc_nest``, cut into ``--patch``² tiles with stride patch/2; it is
tested on the rest of ``hgsc_nest`` (rows 750–1499: same tissue, unseen pixels) and on all of
``hgsc_stroma`` (another region: stroma, sparse elongated nuclei). No test pixel is used for
training or for choosing settings; the instance split's ``h`` was chosen on the train rows.
Training: seed 004's settings (Adam, lr 1e-4, 144² inputs, 4 down / 4 up) with a reduced width
(``--base`` 16: 256 channels at 9×9 instead of 512) and a fixed number of epochs so that it fits
a few CPU minutes; one torch thread by default (``--threads``), as the machine is shared.

Printed: per test image and model, pooled pixel sensitivity / specificity / Dice / Jaccard and
AJI / PQ (DQ, SQ) / object Dice; also "gt-fg + split": the ground-truth foreground put through
the same watershed split, the object-score ceiling of the post-processing. Wall times per stage.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STAINSHIFT_SHARED_DATA", REPO.parent / "shared" / "data")) / "nuclei_hgsc"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--train-rows", type=float, default=0.5, help="top fraction of hgsc_nest rows to train on")
    ap.add_argument("--patch", type=int, default=144)
    ap.add_argument("--base", type=int, default=16, help="U-Net base channels (seed 004: 32)")
    ap.add_argument("--arch", default="basic", choices=["basic", "strided"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--save-model", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from stainshift.atomic import write_json
    from stainshift.nuclei.datasets import load_hgsc, tile_pairs
    from stainshift.nuclei.seg_metrics import object_counts, object_scores_from_counts, pixel_counts, pixel_scores
    from stainshift.nuclei.segmentation import (instances_from_probability, predict_foreground, save_unet,
                                                split_touching, threshold_baseline, train_unet)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    nest, stroma = load_hgsc(args.data)
    cut = int(round(nest.image.shape[0] * args.train_rows))
    train = nest.crop(0, cut, 0, nest.image.shape[1], name=f"hgsc_nest[:{cut}]")
    tests = [nest.crop(cut, nest.image.shape[0], 0, nest.image.shape[1], name=f"hgsc_nest[{cut}:]"), stroma]
    X, Y = tile_pairs([train], size=args.patch, stride=args.patch // 2)
    print(f"train: {train.name} -> {len(X)} tiles of {args.patch} px, foreground {Y.mean():.3f}")

    t0 = time.perf_counter()
    model, history = train_unet(X, Y, epochs=args.epochs, batch_size=args.batch, lr=args.lr, base_channels=args.base,
                                arch=args.arch, seed=args.seed)
    t_train = time.perf_counter() - t0
    if args.save_model:
        save_unet(model, args.save_model, {"train": train.name, "epochs": args.epochs, "lr": args.lr})

    rows, times = [], {"train_s": t_train}
    for img in tests:
        true_fg, true_inst = img.foreground, img.instances
        t0 = time.perf_counter()
        prob = predict_foreground(model, img.image, patch=args.patch)
        unet_inst = instances_from_probability(prob)
        times[f"unet_predict_{img.name}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        base_fg, base_inst = threshold_baseline(img.image)
        times[f"threshold_{img.name}_s"] = time.perf_counter() - t0
        preds = {"U-Net": (prob >= 0.5, unet_inst), "threshold": (base_fg, base_inst),
                 "gt-fg + split": (true_fg, split_touching(true_fg))}
        for name, (fg, inst) in preds.items():
            rows.append({"image": img.name, "model": name, "n_true": img.n_nuclei, "n_pred": int(inst.max()),
                         **pixel_scores(pixel_counts(fg, true_fg)),
                         **object_scores_from_counts(object_counts(inst, true_inst))})
    times["total_s"] = time.perf_counter() - t_all

    cols = ["sensitivity", "specificity", "dice", "jaccard", "aji", "pq", "dq", "sq", "object_dice"]
    print("\n| test image | model | nuclei (true/pred) | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['image']} | {r['model']} | {r['n_true']}/{r['n_pred']} | "
              + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    print("\nwall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "n_train_tiles": len(X), "history": history, "rows": rows, "times": times,
           "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "torch": torch.__version__}
    if args.json:
        write_json(args.json, out, indent=1)
    return out


if __name__ == "__main__":
    main()
