"""Unsupervised nucleus classes on real H&E (seed 004 §3.3 / §4.2.1): InfoGAN vs two k-means baselines.

One command (from the repo root):

    .venv/bin/python benchmarks/bench_nuclei_clusters.py --out /tmp/nuclei_clusters
        # [--iterations 400] [--width 16] [--codes 3] [--threads 1] [--seed 0] [--boot 1000]

Data: ``../shared/data/nuclei_hgsc`` (two real 1500² HGSC H&E crops with instance and type masks;
skipped with a message when absent). Ground-truth instances → 40×40 crops around each centroid
(:func:`stainshift.nuclei.crops.nucleus_crops`, fixed window, white padding, min area 16 px),
labelled with the majority type under the instance. Classes in seed 004's order:
neoplastic (≈ epithelial) / inflammatory (≈ lymphocyte) / connective (≈ fibroblast).

Methods, all fitted on every crop without labels (transductive, as seed 004) and matched to the
classes by the Hungarian algorithm on the same crops (clustering accuracy):

- InfoGAN-WGAN-GP (:mod:`stainshift.nuclei.infogan`), seed 004's learning rates, ``--codes``
  codes, z 16-dim, batch 64, 5 critic steps per iteration, ``--iterations`` iterations on the CPU
  (seed 004 trained 70,000; this is a CPU budget of a few minutes, so a short run), narrower
  layers (``--width``) for the same reason; classes = argmax D_Q on the real crops.
- k-means (k = codes) on flattened 40·40·3 pixel vectors in [0, 1] (seed 004's first baseline).
- k-means on pooled (512-d) features of a randomly initialised stainshift ResNet-18 (standard
  7×7/2 stem + max-pool, crops at their 40 px: feature maps 10/10/5/3/2 px; the ``small_input``
  stem would cost ~15× more compute on the CPU). Seed 004 used ImageNet-pretrained ResNet-152 features; no
  pretrained weights are available offline here, so this baseline is a random-feature one
  (``--encoder-spec`` takes any stainshift encoder spec, with ``"init"`` for local weights).

Prints seed 004's tables (per-class precision / sensitivity / F1 in %, accuracy and macro F1 with
95 % percentile-bootstrap CIs over nuclei, B = ``--boot``) as markdown, each method's confusion
matrix and wall time; writes ``scores.csv``, ``scores.json``, ``infogan.pt`` and ``samples.png``
(generated crops per code, rows share z, beside real crops per class) to ``--out``.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STAINSHIFT_SHARED_DATA", REPO.parent / "shared" / "data")) / "nuclei_hgsc"
IMAGES = ("hgsc_nest", "hgsc_stroma")
#: seed 004's class order (epithelial / lymphocyte / fibroblast) as nuclei_hgsc type ids
CLASSES = {"neoplastic": 3, "inflammatory": 2, "connective": 1}

log = logging.getLogger("bench_nuclei_clusters")


def load_crops(size: int, min_area: int):
    """(crops uint8 (N, size, size, 3), labels 0..2 in CLASSES order, image index (N,)) of typed nuclei."""
    from PIL import Image

    from stainshift.nuclei.crops import concat_crops, nucleus_crops

    parts, groups = [], []
    for i, name in enumerate(IMAGES):
        image = np.asarray(Image.open(DATA / f"{name}.jpg").convert("RGB"))
        inst = np.asarray(Image.open(DATA / f"{name}_inst.png")).astype(np.int32)
        types = np.asarray(Image.open(DATA / f"{name}_type.png"))
        part = nucleus_crops(image, inst, types, size=size, min_area=min_area)
        parts.append(part)
        groups.append(np.full(len(part), i))
    crops = concat_crops(parts)
    lut = np.full(256, -1)  # type id (uint8) -> class index; other ids -> -1
    lut[list(CLASSES.values())] = np.arange(len(CLASSES))
    labels = np.where(crops.labels >= 0, lut[crops.labels], -1)
    keep = labels >= 0
    log.info("%d nuclei cropped (min area %d px), %d with a type of %s", len(crops), min_area, int(keep.sum()),
             list(CLASSES))
    return crops.crops[keep], labels[keep], np.concatenate(groups)[keep]


def markdown(df) -> str:
    """A pipe table of a DataFrame's columns (no index)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for scores.csv/json, infogan.pt, samples.png")
    ap.add_argument("--iterations", type=int, default=400, help="InfoGAN generator iterations (seed 004: 70,000)")
    ap.add_argument("--width", type=int, default=16, help="InfoGAN base channel width (library default 64)")
    ap.add_argument("--codes", type=int, default=3, help="InfoGAN codes = k-means clusters (seed 004: 3 or 5)")
    ap.add_argument("--size", type=int, default=40, help="crop size (seed 004: 40)")
    ap.add_argument("--min-area", type=int, default=16, help="skip instances smaller than this (pixels)")
    ap.add_argument("--encoder-spec", default='{"arch": "resnet18"}',
                    help="stainshift encoder spec (JSON) for the feature k-means baseline")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if not (DATA / "nuclei.csv").is_file():
        print(f"SKIP: real nuclei data not found at {DATA} (set STAINSHIFT_SHARED_DATA)")
        return 0

    import torch

    from stainshift.atomic import write_csv, write_json
    from stainshift.models import build_encoder
    from stainshift.nuclei.cluster import (apply_mapping, cluster_scores, encoder_features, hungarian_match,
                                           kmeans_features, kmeans_pixels, scores_table)
    from stainshift.nuclei.figures import class_samples_figure
    from stainshift.nuclei.infogan import predict_codes, sample_grid, save_infogan, train_infogan

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    crops, labels, groups = load_crops(args.size, args.min_area)
    names = list(CLASSES)
    counts = {n: int((labels == c).sum()) for c, n in enumerate(names)}
    print(f"nuclei_hgsc: {len(crops)} typed nuclei ({counts}) from {len(IMAGES)} images, {args.size}x{args.size} crops")

    clusters, seconds = {}, {}
    t0 = time.perf_counter()
    model, history = train_infogan(crops, n_codes=args.codes, iterations=args.iterations, width=args.width,
                                   seed=args.seed, log_every=max(1, args.iterations // 10))
    clusters["InfoGAN"], _ = predict_codes(model, crops)
    seconds["InfoGAN"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    clusters["k-means (pixels)"] = kmeans_pixels(crops, args.codes, args.seed)
    seconds["k-means (pixels)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    spec = json.loads(args.encoder_spec)
    torch.manual_seed(args.seed)
    encoder = build_encoder(spec)
    feat_name = f"k-means ({spec['arch']} features, {'init' if 'init' in spec else 'random init'})"
    clusters[feat_name] = kmeans_features(encoder_features(encoder, crops), args.codes, args.seed)
    seconds[feat_name] = time.perf_counter() - t0

    results, mappings = {}, {}
    for method, pred in clusters.items():
        mappings[method] = hungarian_match(pred, labels, args.codes, len(names))
        results[method] = cluster_scores(labels, apply_mapping(pred, mappings[method]), names,
                                         n_boot=args.boot, seed=args.seed)
    table = scores_table(results)
    table["seconds"] = [round(seconds[m], 1) for m in table["method"]]

    print(f"\nInfoGAN: {args.iterations} iterations x 5 critic steps, batch 64, width {args.width}, "
          f"{args.codes} codes, {seconds['InfoGAN']:.0f} s on {args.threads} CPU thread(s); last history row: "
          + ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items()))
    print("\n" + markdown(table) + "\n")
    for method, res in results.items():
        print(f"{method}: cluster→class {mappings[method]}; confusion (rows true {'/'.join(names)}, "
              f"columns predicted) {res['confusion']}")

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "scores.csv", table)
    write_json(args.out / "scores.json", {"results": results, "mappings": {m: {str(k): v for k, v in mp.items()}
                                                                         for m, mp in mappings.items()},
                                          "seconds": seconds, "history": history, "args": {
                                              k: str(v) for k, v in vars(args).items()}}, indent=1)
    save_infogan(model, args.out / "infogan.pt")
    code_names = [f"code {c}\n→ {names[mappings['InfoGAN'][c]]}" for c in range(args.codes)]
    real = {n: crops[labels == c][:8] for c, n in enumerate(names)}
    class_samples_figure(sample_grid(model, 8, seed=args.seed), real, args.out / "samples.png", code_names=code_names)
    print(f"\nwrote {args.out}/scores.csv, scores.json, infogan.pt, samples.png; total wall time "
          f"{time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
