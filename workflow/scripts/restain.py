"""Snakemake adapter for `restain_store`: one test store -> its re-stained variants, one per strength
(stainshift.stain.variants.restain_store), each followed by its completion manifest."""
import logging

from stainshift.joblog import job_logging, job_name
from stainshift.stain.variants import restain_store
from stainshift.store import write_manifest

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
job_logging(smk.log[0], job_name(smk.rule, smk.wildcards))
log = logging.getLogger("restain")
cfg = dict(smk.params.restain)
for strength, out in zip(cfg["strengths"], smk.params.variants):
    restain_store(smk.params.store, out, float(strength), seed=int(cfg.get("seed", 0)),
                  batch_size=int(smk.params.batch_size))
    write_manifest(out)
