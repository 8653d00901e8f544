"""Snakemake adapter for `import_crops`: one crop-set config entry -> one {set}-{domain}-{split} store."""
import logging
from pathlib import Path

from stainshift.cropsets import load_crop_set, write_crop_store
from stainshift.store import write_manifest
from stainshift.joblog import job_logging, job_name

job_logging(snakemake.log[0], job_name(snakemake.rule, snakemake.wildcards))  # noqa: F821 (injected by Snakemake)
log = logging.getLogger("import_crops")

entry = dict(snakemake.params.entry)  # noqa: F821
codec = dict(snakemake.params.codec)  # noqa: F821
store_id = snakemake.wildcards.store  # noqa: F821
try:
    crop_set = load_crop_set(entry, base_dir=".")
    n = write_crop_store(crop_set, store_id, snakemake.params.store,  # noqa: F821
                         codec=codec.get("codec") or "jpeg", jpeg_quality=int(codec.get("jpeg_quality") or 90))
except Exception:
    log.error("import_crops failed for store %s (set %s, folder %s)", store_id, entry.get("name"), entry.get("folder"))
    raise
write_manifest(snakemake.params.store)  # noqa: F821  (last: the store is complete)
log.info("%s: %d crops -> %s (dropped %d duplicates, %d label conflicts)", store_id, n, Path(snakemake.params.store),  # noqa: F821
         crop_set.n_duplicates_dropped, crop_set.n_conflicts_dropped)
