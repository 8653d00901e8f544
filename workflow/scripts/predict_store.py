"""Rule `predict_store`: one test store, one method — every run (source x seed) of the method embeds
the store and each of its normalized variants (stainshift.embeddings) and scores them with the run's
heads (stainshift.train.finetune.predict_run). Writes {R}/embeddings/{method}/by_store/{store}/
{source}/seed{k}/…h5, their manifest {store}.csv and {R}/predictions/{method}/{store}.csv, so adding
a test slide embeds and scores only that slide.
"""

import logging
import time

import pandas as pd
import torch

from stainshift.atomic import write_csv
from stainshift.embeddings import RAW, embed_stores, write_predictions
from stainshift.joblog import job_logging, job_name
from stainshift.models import encoder_fingerprint
from stainshift.train import load_encoder, select_device
from stainshift.train.finetune import load_heads, predict_run

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
job_logging(smk.log[0], job_name(smk.rule, smk.wildcards))
log = logging.getLogger("stainshift.predict")
torch.set_num_threads(max(1, smk.threads))
device = select_device(smk.params.cfg.get("device", "auto"))
store = smk.wildcards.store
jobs = [(store, smk.params.store, RAW, RAW)] + [(store, path, m, t) for m, t, path in smk.params.variants]
t0 = time.perf_counter()
manifest, frames = [], []
for meta, enc_path, heads_path in zip(smk.params.runs, smk.input.encoders, smk.input.heads):
    encoder = load_encoder(enc_path, device)
    run_dir = f"{smk.output.embeddings}/{meta['source']}/seed{meta['seed']}"
    attrs = {"method": meta["method"], "source": meta["source"], "seed": meta["seed"],
             "encoder": encoder_fingerprint(encoder), "encoder_path": enc_path}
    rows = pd.DataFrame(embed_stores(encoder, jobs, run_dir, attrs=attrs, device=device,
                                     batch_size=int(smk.params.cfg.get("batch_size", 64))))
    frames += predict_run(load_heads(heads_path), rows, meta, device, test_split=smk.params.test_split)
    manifest.append(rows.assign(method=meta["method"], run_source=meta["source"], seed=meta["seed"]))
    log.info("%s/%s/seed%s: %s and %d variants embedded and scored", meta["method"], meta["source"], meta["seed"],
             store, len(jobs) - 1)
write_csv(smk.output.manifest, pd.concat(manifest, ignore_index=True), index=False)
write_predictions(smk.output.predictions, frames)
log.info("%s: %d runs, %d prediction rows in %.1f s", store, len(smk.params.runs), sum(len(f) for f in frames),
         time.perf_counter() - t0)
