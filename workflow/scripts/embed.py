"""Rule `embed`: encoder features of every tile store and every normalized variant store → HDF5.

Writes {R}/embeddings/{method}/{store}.h5, .../variants/{store}/{stain}/{target}.h5 and
manifest.csv (one row per file: path, store, source, split, center, variant_method, variant_target, n).
"""

import logging
import os
import time
from pathlib import Path

import pandas as pd
import torch

from stainshift.embeddings import RAW, embed_store, embedding_path
from stainshift.models import encoder_fingerprint
from stainshift.train import load_encoder, select_device

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("stainshift.embed")
torch.set_num_threads(max(1, smk.threads))
method = smk.wildcards.method
results = smk.params.results
device = select_device(smk.params.cfg.get("device", "auto"))
encoder = load_encoder(smk.input.encoder, device)
batch_size = int(smk.params.cfg.get("batch_size", 64))
jobs = [(Path(p).name.removesuffix(".zarr"), p, RAW, RAW) for p in smk.input.stores]
jobs += [(s, f"{results}/variants/{s}/{m}/{t}.zarr", m, t) for s, m, t in smk.params.variant_list]
rows = []
t0 = time.perf_counter()
n_tiles = 0
for store, path, vm, vt in jobs:
    out = embedding_path(results, method, store, vm, vt)
    attrs = {"method": method, "store": store, "encoder": encoder_fingerprint(encoder), "encoder_path": smk.input.encoder}
    info = embed_store(encoder, path, out, attrs=attrs, device=device, batch_size=batch_size)
    n_tiles += info["n"]
    rows.append({"path": out, "store": store, "source": path, "slide_id": info.get("slide_id"),
                 "split": info.get("split"), "center": info.get("center"), "variant_method": vm,
                 "variant_target": vt, "n": info["n"]})
    log.info("%s: %d tiles -> %s", path, info["n"], out)
seconds = time.perf_counter() - t0
log.info("embedded %d stores, %d tiles in %.1f s (%.0f tiles/s) with %s on %s", len(jobs), n_tiles, seconds,
         n_tiles / max(seconds, 1e-9), encoder_fingerprint(encoder), device)
tmp = Path(smk.output.manifest).with_name(f".manifest.tmp{os.getpid()}")
pd.DataFrame(rows).to_csv(tmp, index=False)
os.replace(tmp, smk.output.manifest)
