"""The `stainshift` command line. Each stage module contributes its verbs here."""
from __future__ import annotations

from typing import Optional

import typer

from stainshift import __version__

app = typer.Typer(
    help="stainshift: WSI tiling, stain normalization, stain-robust training and cross-center evaluation.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"stainshift {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """stainshift command line."""


@app.command()
def synth(
    outdir: str = typer.Argument(..., help="Folder for the slides, masks, XML files and slides.tsv."),
    centers: str = typer.Option("center_a,center_b,center_c", help="Comma-separated center names (stainshift.synth.CENTERS)."),
    slides_per_center: int = typer.Option(3, min=1, help="Slides per center: last test, one before val (>= 3), rest train."),
    size: int = typer.Option(3072, min=256, help="Level-0 width = height in px (benchmark variant: 16384)."),
    seed: int = typer.Option(0, min=0, help="Study seed; each slide's seed derives from (seed, slide_id)."),
    mpp: float = typer.Option(0.5, min=0.01, help="Level-0 micrometres per pixel."),
    tile_size: int = typer.Option(256, min=16, help="TIFF tile side in px (multiple of 16)."),
    levels: int = typer.Option(3, min=1, help="Pyramid levels (downsample 1, 4, 16, ...)."),
    mask_downsample: int = typer.Option(
        0, min=0, help="Label-mask downsample; 0 = auto (1 up to 8192 px, else the smallest power of 2 giving <= 4096 px)."
    ),
) -> None:
    """Generate synthetic multi-center H&E slides (+ label masks, ASAP XML) and a ready sample sheet."""
    from stainshift.synth import auto_mask_downsample, generate_study

    names = [c.strip() for c in centers.split(",") if c.strip()]
    try:
        sheet, infos = generate_study(
            outdir, centers=names, slides_per_center=slides_per_center, size=size, seed=seed, mpp=mpp,
            tile_size=tile_size, levels=levels, mask_downsample=mask_downsample or auto_mask_downsample(size),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for info in infos:
        typer.echo(
            f"{info.slide_id}\t{info.center}\t{info.size[0]}x{info.size[1]}\ttissue {info.tissue_fraction:.3f}"
            f"\ttumour {info.tumour_fraction:.3f}\t{info.seconds:.1f} s"
        )
    typer.echo(f"wrote {len(infos)} slides and {sheet}")


@app.command()
def inspect(
    store: str = typer.Argument(..., help="A patch store (.zarr) written by the tile / import_crops / normalize stages."),
    montage: Optional[str] = typer.Option(None, help="Write a montage PNG here (default: STORE's name + _montage.png beside it)."),
    n: int = typer.Option(32, min=0, help="Random tiles in the montage (0 = no montage)."),
    indices: Optional[str] = typer.Option(None, help="Comma-separated tile indices for the montage instead of random ones."),
    seed: int = typer.Option(0, min=0, help="Seed of the random tile choice."),
    columns: int = typer.Option(8, min=1, help="Montage columns."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a patch store (tiles, labels, mpp, level, settings) and save a montage of its tiles."""
    import json
    from pathlib import Path

    from stainshift.qc import format_summary, inspect_store
    from stainshift.store import StoreError

    idx = [int(i) for i in indices.split(",") if i.strip()] if indices else None
    out = None
    if n > 0 or idx:
        out = montage or str(Path(store.rstrip("/")).with_name(Path(store.rstrip("/")).stem + "_montage.png"))
    try:
        summary = inspect_store(store, n=n, indices=idx, seed=seed, montage_png=out, columns=columns)
    except (StoreError, IndexError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else format_summary(summary))


if __name__ == "__main__":  # pragma: no cover
    app()
