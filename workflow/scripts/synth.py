"""Snakemake adapter for the `synth` rule: params.synth + outputs -> stainshift.synth.generate_slide."""
import json
import logging

from stainshift.synth import auto_mask_downsample, generate_slide
from stainshift.joblog import job_logging, job_name

job_logging(snakemake.log[0], job_name(snakemake.rule, snakemake.wildcards))  # noqa: F821 (injected by Snakemake)
log = logging.getLogger("synth")

p = dict(snakemake.params.synth)  # noqa: F821
size = int(p["size"])
mask_downsample = int(p.get("mask_downsample") or auto_mask_downsample(size))
try:
    info = generate_slide(
        snakemake.output.slide,  # noqa: F821
        snakemake.output.mask,  # noqa: F821
        snakemake.output.xml,  # noqa: F821
        center=p["center"],
        seed=int(p["seed"]),
        size=size,
        mpp=float(p.get("mpp", 0.5)),
        tile_size=int(p.get("tile_size", 256)),
        levels=int(p.get("levels", 3)),
        mask_downsample=mask_downsample,
        slide_id=p["slide_id"],
    )
except Exception:
    log.error("synth failed for slide %s (params %s)", p.get("slide_id"), p)
    raise
log.info("wrote %s", json.dumps(info.to_dict(), default=str), extra={"console": False})
