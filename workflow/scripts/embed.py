"""Rule `embed_run`: one run's encoder features of its stores → HDF5 (stainshift.embeddings).

Embeds the source's train/val stores (for the probe and its model selection), every test store and
every normalized variant of a test store into {R}/embeddings/{method}/{source}/seed{seed}/stores/,
and lists them in manifest.csv (path, store, source, slide_id, patient, split, center,
variant_method, variant_target, n).
"""

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from stainshift.atomic import write_csv
from stainshift.embeddings import RAW, embed_store, embedding_path
from stainshift.models import encoder_fingerprint
from stainshift.train import load_encoder, select_device
from stainshift.joblog import job_logging, job_name

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
job_logging(smk.log[0], job_name(smk.rule, smk.wildcards))
log = logging.getLogger("stainshift.embed")
torch.set_num_threads(max(1, smk.threads))
meta = dict(smk.params.meta)
stores_dir = smk.output.stores
device = select_device(smk.params.cfg.get("device", "auto"))
encoder = load_encoder(smk.input.encoder, device)
batch_size = int(smk.params.cfg.get("batch_size", 64))
jobs = [(Path(p).name.removesuffix(".zarr"), p, RAW, RAW) for p in smk.params.stores]
jobs += [(s, path, m, t) for (s, m, t), path in zip(smk.params.variant_list, smk.params.variants)]
rows = []
t0 = time.perf_counter()
n_tiles = 0
for k, (store, path, vm, vt) in enumerate(jobs, 1):
    out = embedding_path(stores_dir, store, vm, vt)
    attrs = {"method": meta["method"], "source": meta["source"], "seed": meta["seed"], "store": store,
             "encoder": encoder_fingerprint(encoder), "encoder_path": smk.input.encoder}
    info = embed_store(encoder, path, out, attrs=attrs, device=device, batch_size=batch_size)
    n_tiles += info["n"]
    rows.append({"path": out, "store": store, "source": path, "slide_id": info.get("slide_id"),
                 "patient": info.get("patient"), "split": info.get("split"), "center": info.get("center"),
                 "variant_method": vm, "variant_target": vt, "n": info["n"]})
    log.info("[%d/%d] %s: %d tiles -> %s", k, len(jobs), path, info["n"], out)
seconds = time.perf_counter() - t0
log.info("embedded %d stores, %d tiles in %.1f s (%.0f tiles/s) with %s on %s", len(jobs), n_tiles, seconds,
         n_tiles / max(seconds, 1e-9), encoder_fingerprint(encoder), device)
write_csv(smk.output.manifest, pd.DataFrame(rows), index=False)
