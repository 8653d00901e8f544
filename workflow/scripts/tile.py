"""Snakemake adapter for the `tile_slide` rule: one sample-sheet row + tiling config -> stainshift.tiling.tile_slide."""
import json
import logging
import sys

from stainshift.store import write_manifest
from stainshift.tiling import tile_slide

logging.basicConfig(
    filename=snakemake.log[0],  # noqa: F821 (injected by Snakemake)
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    force=True,
)
logging.captureWarnings(True)
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
        log.exception("tiling failed for slide %s (%s)", row.get("slide_id"), row.get("path"))
        raise
    write_manifest(snakemake.params.store)  # noqa: F821  (last: the store is complete)
    log.info("result %s", json.dumps(result.__dict__, default=str))
    for note in result.warnings:  # on the console too, not only in the job's log file
        print(f"WARNING (tile {row['slide_id']}): {note}", file=sys.stderr)


# Guarded: worker processes (forkserver/spawn) re-import this file and must not tile again.
if __name__ == "__main__":
    main()
