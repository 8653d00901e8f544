"""Predictions back on the slide: per-tile scores, slide heatmaps, crop-set montages, tile selection.

**Which predictions** (:func:`tile_scores`): the rows of one patch store in the predictions table
(:mod:`stainshift.embeddings`), raw tiles only (``variant_method == "raw"``), one ``protocol``
(default ``probe``, the common linear probe every method has) and one replicate ``seed`` (default:
the smallest present). Of the runs left — one per source — only those that never saw the store's
center (neither encoder nor head, :mod:`stainshift.protocol`) are kept, the cells that enter the
headline. A tile's score is the **mean over those sources** of P(positive class) (class 1), its
decision the argmax of the mean probabilities, and its correctness the share of those sources
whose own ``pred`` equals the tile label. Where every source saw the center (e.g. ``sources:
[all]``), all sources are used and the result says ``seen`` (the figures say so in their title).

**Slide heatmap** (:func:`slide_heatmap`): top row — the slide thumbnail (read with
:mod:`stainshift.io`) with the annotation outline and each tile outlined in its label colour; the
mean P(positive) at the tile positions; the share of sources correct per tile. Bottom row (only
with more than one source): each source's P(positive), so disagreement between sources shows.

**Crop sets** (no coordinates; :func:`crop_montage`): the crops ordered by score, each framed in
its true label's colour and captioned with its score and a correct / wrong mark; a store larger
than ``max_tiles`` shows ``max_tiles`` crops at evenly spaced ranks of that order.

Why one module of this size: one figure family (a run's scores back on the slide: score table,
heatmaps, crop-set montages) with shared layout helpers.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from stainshift import embeddings
from stainshift.embeddings import RAW
from stainshift.protocol import split_centers
from stainshift.store import PatchStore

__all__ = ["TileScores", "read_predictions", "tile_scores", "class_names", "tile_size0", "has_coords", "label_colour", "tile_table",
           "parse_where", "select_tiles", "slide_heatmap", "crop_montage", "store_figure"]

POSITIVE = 1  # the class whose probability is drawn (binary tasks: tumour, atypical, ...)
LABEL_COLOURS = {-1: (0.55, 0.55, 0.55), 0: (0.0, 0.62, 0.0), 1: (0.85, 0.0, 0.0), 2: (1.0, 0.55, 0.0),
                 3: (0.6, 0.0, 0.75), 4: (0.0, 0.62, 0.72)}


def label_colour(label: int) -> tuple[float, float, float]:
    """RGB in 0..1 of a class id (unknown = grey; classes beyond 4 cycle)."""
    if label in LABEL_COLOURS:
        return LABEL_COLOURS[label]
    return LABEL_COLOURS[int(label) % 5]


def _proba_columns(df: pd.DataFrame) -> list[str]:
    return sorted((c for c in df.columns if re.fullmatch(r"p\d+", c)), key=lambda c: int(c[1:]))


# ------------------------------------------------------------------------------------------ scores
@dataclass
class TileScores:
    """Scores of one store's tiles from one method's runs (see the module docstring).

    ``table``: indexed by tile index; ``p0 … p{C-1}`` (mean over sources), ``score`` (mean
    P(positive)), ``pred`` (argmax of the mean), ``share_correct`` (NaN for unlabelled tiles),
    ``n_sources``. ``per_source``: source id -> frame of ``score``, ``pred`` on the same index.
    """

    method: str
    protocol: str
    seed: int
    sources: list[str]
    seen: bool
    table: pd.DataFrame
    per_source: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """Number of classes in the score table."""
        return len(_proba_columns(self.table))

    def describe(self) -> str:
        """One line naming the runs behind the scores (figure titles, logs)."""
        which = "every source saw this center" if self.seen else "unseen sources"
        return f"{self.method}, {self.protocol}, seed {self.seed}, {which}: {', '.join(self.sources)}"


def read_predictions(paths: str | os.PathLike | Sequence[str | os.PathLike], store: str | None = None) -> pd.DataFrame:
    """Prediction CSVs concatenated, optionally only the rows of ``store``."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("no predictions CSV given")
    frames = []
    for p in paths:
        df = embeddings.read_predictions(p)
        frames.append(df if store is None else df[df["store"] == store])
    return pd.concat(frames, ignore_index=True)


def tile_scores(preds: pd.DataFrame, store: str, *, protocol: str = "probe", seed: int | None = None,
                unseen_only: bool = True) -> TileScores:
    """Per-tile scores of ``store`` from the prediction rows of one method (module docstring)."""
    rows = preds[(preds["store"] == store) & (preds["variant_method"] == RAW)]
    if rows.empty:
        raise ValueError(f"no raw-tile predictions for store {store!r}")
    methods = sorted(rows["method"].unique())
    if len(methods) > 1:
        raise ValueError(f"predictions of store {store!r} mix methods {methods}: give one method's runs")
    protocols = sorted(rows["protocol"].unique())
    rows = rows[rows["protocol"] == protocol]
    if rows.empty:
        raise ValueError(f"store {store!r}: no predictions with protocol {protocol!r} (have {protocols})")
    seeds = sorted(int(s) for s in rows["seed"].unique())
    seed = seeds[0] if seed is None else int(seed)
    if seed not in seeds:
        raise ValueError(f"store {store!r}: no predictions of seed {seed} (have {seeds})")
    rows = rows[rows["seed"] == seed]
    unseen = np.array([t not in set(split_centers(e)) | set(split_centers(h))
                       for t, e, h in zip(rows["test"], rows["encoder_centers"], rows["head_centers"])], dtype=bool)
    seen = not unseen_only or not unseen.any()
    if not seen:
        rows = rows[unseen]
    pcols = _proba_columns(rows)
    if len(pcols) <= POSITIVE:
        raise ValueError(f"store {store!r}: predictions have class columns {pcols}, need p0 and p1 at least")
    sources = list(dict.fromkeys(rows["source"]))
    per_source = {}
    for src in sources:
        sub = rows[rows["source"] == src].drop_duplicates("index").set_index("index").sort_index()
        per_source[src] = pd.DataFrame({"score": sub[pcols[POSITIVE]],
                                        "pred": sub["pred"].astype(int), "label": sub["label"].astype(int)})
    proba = rows.groupby("index")[pcols].mean().sort_index()
    label = rows.groupby("index")["label"].first().reindex(proba.index).astype(int)
    correct = (rows["pred"].astype(int) == rows["label"].astype(int)).astype(float).where(rows["label"] >= 0)
    table = proba.copy()
    table["score"] = proba[pcols[POSITIVE]]
    table["pred"] = proba.to_numpy().argmax(1)
    table["label"] = label
    table["share_correct"] = correct.groupby(rows["index"]).mean().reindex(proba.index)
    table["n_sources"] = rows.groupby("index")["source"].nunique().reindex(proba.index)
    table.index.name = "index"
    return TileScores(methods[0], protocol, seed, sources, seen, table, per_source)


# ------------------------------------------------------------------------------------------ tables
def class_names(attrs: Mapping[str, Any], n_classes: int = 2, configured: Sequence[str] | None = None) -> list[str]:
    """Class names: the store's ``classes`` (crop sets), else ``configured`` (``tiling.class_names``),
    else ``class k``; padded with ``class k`` to ``n_classes``."""
    names = list(attrs.get("classes") or configured or [])
    return names + [f"class {k}" for k in range(len(names), max(n_classes, 2))]


def tile_size0(store: PatchStore) -> float:
    """A tile's side in level-0 pixels (the read plan's, else patch size x downsample)."""
    plan = store.attrs.get("read_plan") or {}
    if plan.get("tile_size0"):
        return float(plan["tile_size0"])
    return float(store.patch_size) * float(store.attrs.get("downsample") or 1.0)


def has_coords(store: PatchStore) -> bool:
    """Whether the tiles have slide coordinates (crop sets do not)."""
    return len(store) > 0 and bool((store.coords >= 0).all())


def tile_table(store: PatchStore, scores: TileScores | None = None, names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per tile: ``index, x, y, label, label_name, tissue_fraction, label_fraction, center``
    and, with ``scores``, ``score, pred, pred_name, share_correct`` (NaN / "" for unscored tiles)."""
    names = list(names or class_names(store.attrs, scores.n_classes if scores else 2))

    def name_of(k: Any) -> str:
        return names[int(k)] if pd.notna(k) and 0 <= int(k) < len(names) else ("unlabelled" if pd.notna(k) else "")

    df = pd.DataFrame({"index": np.arange(len(store)), "x": store.coords[:, 0], "y": store.coords[:, 1],
                       "label": store.label, "tissue_fraction": store.tissue_fraction,
                       "label_fraction": store.label_fraction})
    df["label_name"] = [name_of(k) for k in df["label"]]
    df["center"] = str(store.attrs.get("center") or "")
    if scores is not None:
        t = scores.table.reindex(df["index"])
        df["score"] = t["score"].to_numpy()
        df["pred"] = t["pred"].to_numpy()
        df["pred_name"] = [name_of(k) for k in df["pred"]]
        df["share_correct"] = t["share_correct"].to_numpy()
    return df


_WHERE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|!=|==|=|>|<)\s*(.+?)\s*$")


def parse_where(expr: str) -> tuple[str, str, Any]:
    """``key OP value`` (OP one of = == != < <= > >=; ``key=lo..hi`` is an inclusive range) ->
    (key, op, value); value is a float, a (lo, hi) pair, or text."""
    m = _WHERE.match(expr)
    if not m:
        raise ValueError(f"--where {expr!r}: expected KEY OP VALUE, e.g. label=1, score>=0.8, score=0.2..0.8")
    key, op, raw = m.groups()
    op = "=" if op == "==" else op
    if ".." in raw:
        if op != "=":
            raise ValueError(f"--where {expr!r}: a range lo..hi goes with '='")
        lo, hi = raw.split("..", 1)
        return key, "range", (float(lo) if lo else -math.inf, float(hi) if hi else math.inf)
    try:
        return key, op, float(raw)
    except ValueError:
        if op not in ("=", "!="):
            raise ValueError(f"--where {expr!r}: {op} needs a number") from None
        return key, op, raw


def select_tiles(table: pd.DataFrame, where: Sequence[str]) -> pd.DataFrame:
    """Rows of a :func:`tile_table` meeting every ``where`` filter; ``label`` / ``pred`` also take
    class names (``label=tumour``)."""
    keep = pd.Series(True, index=table.index)
    for expr in where:
        key, op, value = parse_where(expr)
        if key not in table.columns:
            raise ValueError(f"--where {expr!r}: unknown key {key!r}; keys: {', '.join(table.columns)}"
                             + ("" if "score" in table.columns else " (score / pred need --predictions)"))
        col = table[key]
        if isinstance(value, str) and key in ("label", "pred"):
            col = table[f"{key}_name"]
        elif isinstance(value, str):
            col = col.astype(str)
        elif not pd.api.types.is_numeric_dtype(col):
            col, value = col.astype(str), (f"{value:g}" if isinstance(value, float) else value)
        if op == "range":
            hit = col.between(*value)
        else:
            hit = {"=": col == value, "!=": col != value, "<": col < value, "<=": col <= value,
                   ">": col > value, ">=": col >= value}[op]
        keep &= hit.fillna(False).astype(bool)
    return table[keep]


# ----------------------------------------------------------------------------------------- figures
def _thumbnail(store: PatchStore, max_size: int) -> tuple[np.ndarray, float, tuple[int, int], str]:
    """(RGB thumbnail, level-0 px per thumbnail px, level-0 (w, h), note) of the store's slide; a
    blank canvas of the slide's size where the slide file is gone."""
    from stainshift.io import open_slide

    dims = store.attrs.get("slide_dimensions")
    path = store.attrs.get("source_path")
    try:
        with open_slide(path, mpp=store.attrs.get("mpp_level0")) as reader:
            thumb, ds = reader.thumbnail(max_size)
            return thumb, float(ds), tuple(int(v) for v in reader.dimensions), ""
    except Exception as exc:  # noqa: BLE001 - any unreadable slide: draw the tiles on a blank canvas
        if not dims:
            dims = [int(store.coords[:, 0].max() + tile_size0(store)), int(store.coords[:, 1].max() + tile_size0(store))]
        ds = max(dims) / float(max_size)
        h, w = max(1, round(dims[1] / ds)), max(1, round(dims[0] / ds))
        note = f"slide {Path(str(path)).name} not readable ({type(exc).__name__}): blank canvas"
        return np.full((h, w, 3), 255, np.uint8), ds, (int(dims[0]), int(dims[1])), note


def _tile_raster(store: PatchStore, values: np.ndarray, shape: tuple[int, int], ds: float) -> np.ndarray:
    """Float image at the thumbnail's resolution: each tile's footprint filled with its value, NaN elsewhere."""
    out = np.full(shape, np.nan, np.float32)
    side = tile_size0(store) / ds
    for (x, y), v in zip(store.coords, values):
        if np.isfinite(v):
            x0, y0 = int(x / ds), int(y / ds)
            out[y0:max(y0 + 1, int(round(y0 + side))), x0:max(x0 + 1, int(round(x0 + side)))] = v
    return out


def _annotation_outlines(ax: Any, path: str | None, dims0: tuple[int, int], size0: float, colour: str, lw: float) -> str:
    """Draw the annotation's outline (polygons; a mask's contour) on ``ax`` in level-0 coordinates;
    returns a note when there is none or it cannot be read."""
    from stainshift.annotations import DEFAULT_EXCLUDE_GROUPS, MASK_SUFFIXES, AnnotationError, load_annotation, read_polygons

    if not path:
        return "no annotation"
    try:
        if Path(path).suffix.lower() in MASK_SUFFIXES:
            raster = load_annotation(path, dims0, tile_size0=size0)
            h, w = raster.classes.shape
            ax.contour((raster.classes > 0).astype(float), levels=[0.5], colors=[colour], linewidths=lw,
                       extent=(0, w * raster.downsample, 0, h * raster.downsample), origin="upper")
            return ""
        for poly in read_polygons(path):
            ring = np.vstack([poly.exterior, poly.exterior[:1]])
            ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=lw, ls="--" if poly.group in DEFAULT_EXCLUDE_GROUPS else "-")
        return ""
    except AnnotationError as exc:
        return f"annotation not drawn ({exc})"


def slide_heatmap(store_path: str | os.PathLike, scores: TileScores, out_png: str | os.PathLike, *,
                  names: Sequence[str] | None = None, annotation: str | None = None, thumb_size: int = 1024) -> Path:
    """The slide figure of the module docstring, saved to ``out_png``. ``annotation`` overrides the
    store's ``annotation`` attribute."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    from stainshift.plots import save_figure

    store = PatchStore.open(store_path)
    names = list(names or class_names(store.attrs, scores.n_classes))
    table = tile_table(store, scores, names)
    thumb, ds, dims0, slide_note = _thumbnail(store, thumb_size)
    size0 = tile_size0(store)
    faded = (0.45 * thumb.mean(-1, keepdims=True) + 0.55 * 255).repeat(3, -1).astype(np.uint8)
    extent = (0, thumb.shape[1] * ds, thumb.shape[0] * ds, 0)
    annotation = annotation if annotation is not None else store.attrs.get("annotation")
    pos_name = names[POSITIVE]

    multi = len(scores.sources) > 1
    src_rows = math.ceil(len(scores.sources) / 4) if multi else 0
    aspect = min(2.0, max(0.5, thumb.shape[0] / thumb.shape[1]))
    fig = plt.figure(figsize=(15, 4.6 * aspect + 0.9 + src_rows * (3.2 * aspect + 0.5)), layout="constrained")
    grid = fig.add_gridspec(1 + src_rows, 12, height_ratios=[4.6 * aspect] + [3.2 * aspect] * src_rows)
    axes = [fig.add_subplot(grid[0, 4 * i:4 * i + 4]) for i in range(3)]

    def frame(ax: Any, title: str, image: np.ndarray, ticks: bool = True) -> None:
        ax.imshow(image, extent=extent, interpolation="bilinear")
        ax.set_xlim(0, dims0[0])
        ax.set_ylim(dims0[1], 0)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7, labelleft=ticks, labelbottom=ticks)

    # A: slide, annotation, tile labels
    frame(axes[0], "slide, annotation, tile labels", thumb)
    ann_note = _annotation_outlines(axes[0], annotation, dims0, size0, "#1f3cff", 1.4)
    boxes = [Rectangle((x, y), size0, size0) for x, y in store.coords]
    axes[0].add_collection(PatchCollection(boxes, facecolor="none", lw=0.6,
                                           edgecolor=[label_colour(int(k)) for k in store.label]))
    present = sorted(set(int(k) for k in store.label))
    handles = [Line2D([], [], color="#1f3cff", lw=1.4, label="annotation")] if not ann_note else []
    handles += [Patch(fc="none", ec=label_colour(k), label=f"tile: {names[k] if k >= 0 else 'unlabelled'}") for k in present]
    axes[0].legend(handles=handles, fontsize=7, loc="lower left", framealpha=0.85)
    axes[0].set_xlabel("level-0 x (px)", fontsize=8)
    axes[0].set_ylabel("level-0 y (px)", fontsize=8)
    if ann_note or slide_note:
        axes[0].text(0.01, 0.99, "; ".join(n for n in (slide_note, ann_note) if n)[:90], transform=axes[0].transAxes,
                     fontsize=7, va="top", bbox={"fc": "white", "alpha": 0.8, "lw": 0})

    # B: mean P(positive); C: share of sources correct
    panels = [(axes[1], table["score"].to_numpy(float), "coolwarm",
               f"P({pos_name}), mean of {len(scores.sources)} source{'s' if multi else ''}", f"P({pos_name})"),
              (axes[2], table["share_correct"].to_numpy(float), "RdYlGn",
               "correct vs tile label" + (" (share of sources)" if multi else ""),
               "share of sources correct" if multi else "correct (1) / wrong (0)")]
    for ax, values, cmap, title, cbar in panels:
        frame(ax, title, faded, ticks=False)
        raster = _tile_raster(store, values, thumb.shape[:2], ds)
        im = ax.imshow(np.ma.masked_invalid(raster), extent=extent, cmap=cmap, vmin=0, vmax=1, alpha=0.85,
                       interpolation="nearest")
        _annotation_outlines(ax, annotation, dims0, size0, "black", 0.8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).set_label(cbar, fontsize=8)
    labelled = table[table["label"] >= 0]
    if len(labelled):
        acc = float((labelled["pred"] == labelled["label"]).mean())
        axes[2].set_title(f"{axes[2].get_title()}\nmean-P decision: accuracy {acc:.2f} on {len(labelled)} labelled "
                          "tiles (unlabelled: blank)", fontsize=9)

    # bottom rows: each source's P(positive) on the same colour scale
    per_row = min(len(scores.sources), 4)
    small = []
    for i, src in enumerate(scores.sources if multi else []):
        w = 12 // per_row
        ax = fig.add_subplot(grid[1 + i // per_row, w * (i % per_row):w * (i % per_row) + w])
        per = scores.per_source[src].reindex(np.arange(len(store)))
        lab = per["label"] >= 0
        acc = float((per["pred"][lab] == per["label"][lab]).mean()) if lab.any() else float("nan")
        frame(ax, f"source {src}: P({pos_name}), accuracy {acc:.2f}", faded, ticks=False)
        im = ax.imshow(np.ma.masked_invalid(_tile_raster(store, per["score"].to_numpy(float), thumb.shape[:2], ds)),
                       extent=extent, cmap="coolwarm", vmin=0, vmax=1, alpha=0.85, interpolation="nearest")
        small.append(ax)
    if small:
        fig.colorbar(im, ax=small, fraction=0.02, pad=0.01).set_label(f"P({pos_name}) per source", fontsize=8)
    attrs = store.attrs
    fig.suptitle(f"{attrs.get('slide_id') or Path(store_path).stem} (center {attrs.get('center')}, "
                 f"split {attrs.get('split')}, {len(store)} tiles): {scores.describe()}", fontsize=11)
    return save_figure(fig, out_png)


def _crop_grid(tiles: np.ndarray, frames: Sequence[tuple[float, float, float]], columns: int,
               cell: int, border: int) -> np.ndarray:
    """RGB grid of crops, each resized to ``cell`` px and framed ``border`` px in its colour."""
    from PIL import Image

    rows = math.ceil(len(tiles) / columns)
    step = cell + 2 * border
    out = np.full((rows * step, columns * step, 3), 255, np.uint8)
    for i, (tile, colour) in enumerate(zip(tiles, frames)):
        r, c = divmod(i, columns)
        y, x = r * step, c * step
        out[y:y + step, x:x + step] = np.round(np.array(colour) * 255).astype(np.uint8)
        img = Image.fromarray(tile).resize((cell, cell), Image.Resampling.NEAREST if tile.shape[0] < cell else Image.Resampling.BILINEAR)
        out[y + border:y + border + cell, x + border:x + border + cell] = np.asarray(img)
    return out


def crop_montage(store_path: str | os.PathLike, scores: TileScores, out_png: str | os.PathLike, *,
                 names: Sequence[str] | None = None, max_tiles: int = 96, columns: int = 12) -> Path:
    """The crop-set figure of the module docstring, saved to ``out_png``."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from stainshift.plots import save_figure

    store = PatchStore.open(store_path)
    names = list(names or class_names(store.attrs, scores.n_classes))
    table = tile_table(store, scores, names).dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable")
    n = len(table)
    ranks = np.unique(np.round(np.linspace(0, n - 1, min(n, max_tiles))).astype(int)) if n else np.zeros(0, int)
    shown = table.iloc[ranks]
    columns = max(1, min(columns, len(shown)))
    cell, border = 72, 5
    grid = _crop_grid(store.read(shown["index"].to_numpy(copy=True)), [label_colour(int(k)) for k in shown["label"]],
                      columns, cell, border) if len(shown) else np.full((cell, cell, 3), 255, np.uint8)
    width = max(6.0, 1.05 * columns + 0.4)
    fig, ax = plt.subplots(figsize=(width, width * grid.shape[0] / grid.shape[1] + 1.3), layout="constrained")
    ax.imshow(grid, interpolation="nearest")
    step = cell + 2 * border
    for i, row in enumerate(shown.itertuples()):
        r, c = divmod(i, columns)
        mark = "" if row.label < 0 else (" ✓" if row.pred == row.label else " ✗")
        ax.text(c * step + step / 2, (r + 1) * step - 1, f"#{ranks[i] + 1} p={row.score:.2f}{mark}",
                ha="center", va="bottom", fontsize=6.5, color="black",
                bbox={"fc": "white", "alpha": 0.8, "lw": 0, "pad": 0.6})
    ax.set_axis_off()
    present = sorted(set(int(k) for k in shown["label"]))
    handles = [Patch(fc=label_colour(k), label=f"true: {names[k] if k >= 0 else 'unlabelled'}") for k in present]
    handles += [Patch(fc="white", ec="none", label=f"p = P({names[POSITIVE]}); ✓ / ✗ mean-P decision correct / wrong")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=8, frameon=False)
    subset = f"{len(shown)} of {n} crops" + (" at evenly spaced ranks" if len(shown) < n else "")
    attrs = store.attrs
    fig.suptitle(f"{Path(store_path).stem} (center {attrs.get('center')}, split {attrs.get('split')}): "
                 f"crops by P({names[POSITIVE]}), highest first; {subset}\n{scores.describe()}", fontsize=10)
    return save_figure(fig, out_png)


def store_figure(store_path: str | os.PathLike, scores: TileScores, out_png: str | os.PathLike, *,
                 names: Sequence[str] | None = None, annotation: str | None = None) -> Path:
    """:func:`slide_heatmap` for a store with slide coordinates, :func:`crop_montage` otherwise."""
    store = PatchStore.open(store_path)
    if has_coords(store):
        return slide_heatmap(store_path, scores, out_png, names=names, annotation=annotation)
    return crop_montage(store_path, scores, out_png, names=names)
