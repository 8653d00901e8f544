"""The `stainshift` command line. Each stage module contributes its verbs here."""
from __future__ import annotations

from typing import List, Optional

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
    slides_per_center: int = typer.Option(4, min=1, help="Slides per center: last test, one before val (>= 3), rest train."),
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
    where: Optional[List[str]] = typer.Option(
        None, "--where", help="Select tiles: KEY OP VALUE with OP in = != < <= > >=, or KEY=LO..HI; repeatable (all "
        "must hold). Keys: label (id or class name), center, tissue_fraction, label_fraction, index, x, y and, with "
        "--predictions, score (P(positive class)), pred, share_correct. The montage then shows selected tiles."),
    predictions: Optional[List[str]] = typer.Option(
        None, "--predictions", help="Predictions CSV(s) of one method (repeatable): scores for --where "
        "(protocol probe, first seed, mean over the sources that never saw the store's center)."),
    protocol: str = typer.Option("probe", help="Prediction protocol for the scores (probe | native)."),
    class_names: Optional[str] = typer.Option(None, help="Comma-separated class names for --where label=NAME "
                                              "(default: the store's, else 'class k')."),
) -> None:
    """Summarise a patch store (tiles, labels, mpp, level, settings) and save a montage of its tiles."""
    import json
    from pathlib import Path

    import numpy as np

    from stainshift.qc import format_summary, inspect_store
    from stainshift.store import StoreError

    idx = [int(i) for i in indices.split(",") if i.strip()] if indices else None
    if where and idx:
        raise typer.BadParameter("give --where or --indices, not both")
    selection = None
    if where or predictions:
        try:
            names = [c.strip() for c in class_names.split(",")] if class_names else None
            selection = _select(store, where or [], predictions or [], protocol, names)
        except (StoreError, ValueError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        chosen = selection.pop("_indices")
        k = min(n, len(chosen))
        idx = sorted(np.random.default_rng(seed).choice(chosen, size=k, replace=False).tolist()) if k else []
    out = None
    if idx or (n > 0 and selection is None):
        out = montage or str(Path(store.rstrip("/")).with_name(Path(store.rstrip("/")).stem + "_montage.png"))
    try:
        summary = inspect_store(store, n=n, indices=idx, seed=seed, montage_png=out, columns=columns)
    except (StoreError, IndexError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps({**summary, **({"selection": selection} if selection else {})}, indent=2, default=str))
        return
    typer.echo(format_summary(summary))
    if selection is not None:
        typer.echo("\nselection\n" + format_summary(selection))


def _select(store_path: str, where: List[str], predictions: List[str], protocol: str,
            names: Optional[List[str]]) -> dict:
    """The tiles of a store meeting every --where filter: a summary for `inspect` plus their indices."""
    from pathlib import Path

    from stainshift.slide_view import read_predictions, select_tiles, tile_scores, tile_table
    from stainshift.store import PatchStore

    store = PatchStore.open(store_path)
    store_id = Path(store_path.rstrip("/")).stem
    scores = tile_scores(read_predictions(predictions, store_id), store_id, protocol=protocol) if predictions else None
    chosen = select_tiles(tile_table(store, scores, names), where)
    out: dict = {"where": " and ".join(where) or "(all tiles)", "selected": f"{len(chosen)} of {len(store)} tiles",
                 "labels": {str(k): int(v) for k, v in chosen["label_name"].value_counts().sort_index().items()}}
    if scores is not None:
        out["scores"] = scores.describe()
        if len(chosen):
            out["score_range"] = f"{chosen['score'].min():.3f} .. {chosen['score'].max():.3f}"
    shown = chosen["index"].tolist()
    out["indices"] = ",".join(map(str, shown[:40])) + (f",... (+{len(shown) - 40})" if len(shown) > 40 else "")
    out["_indices"] = shown
    return out


@app.command("check-config")
def check_config(
    files: List[str] = typer.Argument(..., help="config files in the order given to snakemake "
                                               "(config/config.yaml first, then overlays)"),
    schema: Optional[str] = typer.Option(None, help="config schema (default: the checkout's "
                                                    "workflow/schemas/config.schema.yaml)"),
) -> None:
    """Check config files before a run: YAML syntax (file, line, column), the merged config against
    the schema (every bad key), the pretraining settings. Snakemake reports a YAML error without
    naming the file or line."""
    from pathlib import Path

    from stainshift.train import check_pretrain_config
    from stainshift.validation import ConfigError, check_config_files

    schema_path = Path(schema) if schema else Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    try:
        merged = check_config_files(files, schema_path)
        check_pretrain_config(merged.get("pretrain") or {})
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {' + '.join(files)} ({len(merged)} top-level keys)")


@app.command("export")
def export(
    store: str = typer.Argument(..., help="A patch store (.zarr), any codec."),
    out: str = typer.Argument(..., help="The copy to write (a .zarr directory)."),
    codec: str = typer.Option("zstd", help="Lossless codec built into zarr: zstd | gzip (gzip: readers without zstd)."),
    level: Optional[int] = typer.Option(None, help="Compression level (default: zstd 3, gzip 6)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it is a zarr store (atomically, after success)."),
) -> None:
    """Copy a store with lossless tiles that any zarr-3 reader opens without stainshift (JPEG stores need it)."""
    from pathlib import Path

    from stainshift.store import PatchStore, StoreError, export_store

    try:
        path = export_store(store, out, codec=codec, level=level, overwrite=overwrite)
    except StoreError as exc:
        raise typer.BadParameter(str(exc)) from exc

    def mb(p: Path) -> float:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6

    st = PatchStore.open(path)
    new, old = st.attrs["codec"], st.attrs["exported_from"]["codec"]
    old_name = old.get("name") if isinstance(old, dict) else old
    typer.echo(f"wrote {len(st)} tiles to {path} ({new['name']} level {new['level']}, {mb(path):.1f} MB; "
               f"source {old_name}, {mb(Path(store)):.1f} MB)")


@app.command("export-geojson")
def export_geojson(
    store: str = typer.Argument(..., help="A patch store (.zarr) of a tiled slide."),
    predictions: Optional[List[str]] = typer.Option(
        None, "--predictions", help="Predictions CSV(s) of one method (repeatable): adds prediction, score and the "
        "predicted class as QuPath classification (protocol, first seed, mean over the unseen sources)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output file (default: STORE's name + .geojson beside it)."),
    protocol: str = typer.Option("probe", help="Prediction protocol (probe | native)."),
    seed: Optional[int] = typer.Option(None, help="Replicate seed of the predictions (default: the smallest)."),
    all_sources: bool = typer.Option(False, "--all-sources", help="Average every source, also those that saw the center."),
    class_names: Optional[str] = typer.Option(None, help="Comma-separated class names (default: the store's, else 'class k')."),
) -> None:
    """Write a store's tiles as GeoJSON in level-0 pixels: import into QuPath on the original slide."""
    from pathlib import Path

    from stainshift.export import export_store
    from stainshift.store import StoreError

    target = out or str(Path(store.rstrip("/")).with_suffix(".geojson"))
    names = [c.strip() for c in class_names.split(",")] if class_names else None
    try:
        path, n, scores = export_store(store, target, predictions=predictions or [], protocol=protocol, seed=seed,
                                       unseen_only=not all_sources, names=names)
    except (StoreError, ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"wrote {n} tiles to {path}" + (f" (scores: {scores.describe()})" if scores else ""))


if __name__ == "__main__":  # pragma: no cover
    app()
