"""Snakemake adapter for the `tile_slide` rule: one sample-sheet row + tiling config -> stainshift.tiling.tile_slide."""
import json
import logging
import sys

from stainshift.store import write_manifest
from stainshift.tiling import tile_slide
from stainshift.joblog import job_logging, job_name

job_logging(snakemake.log[0], job_name(snakemake.rule, snakemake.wildcards))  # noqa: F821 (injected by Snakemake)
log = logging.getLogger("tile")



def main() -> None:
    row = dict(snakemake.params.row)  # noqa: F821
    cfg = dict(snakemake.params.tiling)  # noqa: F821
    cfg["workers"] = max(1, min(int(cfg.get("workers", 1)), int(snakemake.threads)))  # noqa: F821
    try:
        result = tile_slide(
            snakemake.input.slide,  # noqa: F821
            snakemake.params.store,  # noqa: F821
            cfg,
            slide_id=row["slide_id"],
            center=row.get("center") or "",
            patient=row.get("patient") or "",
            split=row.get("split") or "",
            label=row.get("label"),
            annotation=snakemake.input.get("annotation"),  # noqa: F821
            mpp=float(row["mpp"]) if row.get("mpp") not in (None, "") else None,
            qc_png=snakemake.output.qc,  # noqa: F821
            progress=sys.stderr.isatty(),
        )
    except Exception:
        log.error("tiling failed for slide %s (%s)", row.get("slide_id"), row.get("path"))
        raise
    write_manifest(snakemake.params.store)  # noqa: F821  (last: the store is complete)
    log.info("%d tiles kept of %d candidates (%.1f s)", result.n_kept, result.n_candidates,
             result.stages.get("total", float("nan")))
    log.info("result %s", json.dumps(result.__dict__, default=str), extra={"console": False})
    for note in result.warnings:  # on the console too (job_logging), not only in the job's log file
        log.warning(note)


# Guarded: worker processes (forkserver/spawn) re-import this file and must not tile again.
if __name__ == "__main__":
    main()
