"""Snakemake adapter for `select_targets`: config normalize.targets -> {R}/normalize/targets.json."""
import logging

from stainshift import __version__
from stainshift.stain.targets import Candidate, select_listed, select_random, write_json_atomic
from stainshift.joblog import job_logging, job_name

job_logging(snakemake.log[0], job_name(snakemake.rule, snakemake.wildcards))  # noqa: F821 (injected by Snakemake)
log = logging.getLogger("select_targets")

cfg = dict(snakemake.params.targets)  # noqa: F821
plan = [tuple(p) for p in snakemake.params.plan]  # noqa: F821
min_tissue = float(cfg.get("min_tissue", 0.5))
try:
    if cfg["mode"] == "random":
        cands = [Candidate(**c) for c in snakemake.params.candidates]  # noqa: F821
        targets = select_random(plan, cands, seed=int(cfg.get("seed", 0)), min_tissue=min_tissue)
    else:
        targets = select_listed(plan, list(cfg.get("paths") or []), min_tissue=min_tissue)
except Exception:
    log.error("select_targets failed (normalize.targets = %s)", cfg)
    raise
payload = {
    "mode": cfg["mode"],
    "seed": cfg.get("seed"),
    "split": cfg.get("split"),
    "methods": list(snakemake.params.methods),  # noqa: F821
    "min_tissue": min_tissue,
    "software_version": __version__,
    "targets": targets,
}
write_json_atomic(snakemake.output.targets, payload)  # noqa: F821
for t in targets:
    log.info("target %s (%s): %s", t["id"], t["method"], t)
