"""Rule `embed_run`: one run's encoder features of the source's train/val stores → HDF5
(stainshift.embeddings), for the probe and its model selection; listed in
{R}/embeddings/{method}/{source}/seed{seed}/manifest.csv. Test stores are embedded by `predict_store`.
"""

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from stainshift.atomic import write_csv
from stainshift.embeddings import RAW, embed_stores
from stainshift.models import encoder_fingerprint
from stainshift.train import load_encoder, select_device
from stainshift.joblog import job_logging, job_name

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
job_logging(smk.log[0], job_name(smk.rule, smk.wildcards))
log = logging.getLogger("stainshift.embed")
torch.set_num_threads(max(1, smk.threads))
meta = dict(smk.params.meta)
device = select_device(smk.params.cfg.get("device", "auto"))
encoder = load_encoder(smk.input.encoder, device)
jobs = [(Path(p).name.removesuffix(".zarr"), p, RAW, RAW) for p in smk.params.stores]
t0 = time.perf_counter()
attrs = {"method": meta["method"], "source": meta["source"], "seed": meta["seed"],
         "encoder": encoder_fingerprint(encoder), "encoder_path": smk.input.encoder}
rows = embed_stores(encoder, jobs, smk.output.stores, attrs=attrs, device=device,
                    batch_size=int(smk.params.cfg.get("batch_size", 64)), log=log)
n_tiles = sum(r["n"] for r in rows)
seconds = time.perf_counter() - t0
log.info("embedded %d stores, %d tiles in %.1f s (%.0f tiles/s) with %s on %s", len(jobs), n_tiles, seconds,
         n_tiles / max(seconds, 1e-9), encoder_fingerprint(encoder), device)
write_csv(smk.output.manifest, pd.DataFrame(rows), index=False)
