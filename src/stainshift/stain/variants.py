"""Normalized variants of patch stores (the `normalize` stage) and per-target montages.

A variant store has the source store's layout, tiles in the same order with the same coords,
labels, tissue and label fractions; its attrs are the source's plus ``stain_method``,
``stain_target`` (target id), ``stain_target_source`` (where the target tile came from),
``stain_fallback_tiles`` (tiles left unchanged: blank / background / single stain) and the
software version. Tiles stream through in batches, so memory stays at one batch.

Re-stained variants (``stain_method = "restain"``, :func:`restain_store`) feed the stain-robustness
curve: the same tiles with their own H and E concentrations scaled by α, β drawn per tile from
[1 − s/2, 1 + s] at strength s (s = 1: seed 003's range [0.5, 2]; s = 0: the raw tiles), seeded by
(seed, store, strength) alone, so every method and run scores the same pixels.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..atomic import atomic_path
from .normalizers import get_normalizer
from .targets import RESTAIN, load_target, restain_level

log = logging.getLogger(__name__)


def _software_version() -> str:
    from stainshift import __version__

    return str(__version__)


def fitted_normalizer(method: str, target: np.ndarray, model: str | os.PathLike | None = None) -> Any:
    """The normalizer of ``method`` fitted to ``target``; ``neural`` (seed 004) is instead the
    stain-transfer CNN trained on the target's style, loaded from ``model`` (rule train_stain_transfer)."""
    if method == "neural":
        if model is None:
            raise ValueError("the neural normalizer needs its trained stain-transfer model (rule train_stain_transfer)")
        from .neural import load_stain_transfer

        return load_stain_transfer(model)
    return get_normalizer(method).fit(target)


def normalize_store(
    store_path: str | os.PathLike,
    targets: Sequence[dict[str, Any]],
    out_paths: dict[str, str | os.PathLike],
    batch_size: int = 64,
    models: dict[str, str | os.PathLike] | None = None,
) -> dict[str, int]:
    """Write one variant store per target entry (``out_paths[target id]``); returns fallback counts.
    ``models``: target id -> stain-transfer model file of the ``neural`` targets."""
    from stainshift.store import PatchStore, write_store

    src = PatchStore.open(store_path)
    n = len(src)
    fallbacks: dict[str, int] = {}
    for entry in targets:
        tid, method = entry["id"], entry["method"]
        if tid not in out_paths:
            raise KeyError(f"normalize_store: no output path for target {tid!r}")
        normalizer = fitted_normalizer(method, load_target(entry), (models or {}).get(tid))
        counter = {"fallback": 0}

        def tiles(normalizer: Any = normalizer, counter: dict = counter) -> Iterator[np.ndarray]:
            for start in range(0, n, batch_size):
                out = normalizer.transform(src.read(slice(start, min(n, start + batch_size))))
                counter["fallback"] += int(np.count_nonzero(normalizer.last_flags))
                yield from out

        attrs = dict(src.attrs)
        attrs.pop("n_tiles", None)
        attrs.pop("store_format", None)
        attrs.update(
            stain_method=method,
            stain_target=tid,
            stain_target_source=_target_source(entry),
            stain_params=normalizer.params.as_dict(),
            software_version=_software_version(),
            patch_size=src.patch_size,
        )
        codec, jpeg_quality = _source_codec(src.attrs)
        images: Any = tiles() if n else np.empty((0, src.patch_size, src.patch_size, 3), np.uint8)
        # the fallback count is known only after streaming: write it with the store's attrs below
        write_store(
            out_paths[tid], images, coords=src.coords, tissue_fraction=src.tissue_fraction,
            label=src.label, label_fraction=src.label_fraction, attrs=attrs, codec=codec,
            jpeg_quality=jpeg_quality,
        )
        _set_attr(out_paths[tid], "stain_fallback_tiles", counter["fallback"])
        fallbacks[tid] = counter["fallback"]
        log.info("%s -> %s (%s, target %s): %d tiles, %d fallback", store_path, out_paths[tid], method, tid,
                 n, counter["fallback"])
    return fallbacks


def restain_range(strength: float) -> tuple[float, float]:
    """The α (= β) range at strength s ∈ [0, 1]: [1 − s/2, 1 + s]; s = 1 is seed 003's [0.5, 2]."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"re-staining strength {strength!r} must lie in [0, 1]")
    return 1.0 - 0.5 * float(strength), 1.0 + float(strength)


def restain_store(store_path: str | os.PathLike, out_path: str | os.PathLike, strength: float, *,
                  seed: int = 0, batch_size: int = 64) -> int:
    """Write the store's tiles re-stained in H&E space at ``strength`` (module docstring) to
    ``out_path``; returns the number of tiles left unchanged (no two-stain estimate: background)."""
    import zlib

    from stainshift.store import PatchStore, write_store

    from stainshift.augment.he import he_augment

    src = PatchStore.open(store_path)
    n = len(src)
    lo_hi = restain_range(strength)
    name = Path(store_path).name.removesuffix(".zarr")
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(round(float(strength) * 1000))])
    counter = {"fallback": 0}

    def tiles() -> Iterator[np.ndarray]:
        for start in range(0, n, batch_size):
            out, info = he_augment(src.read(slice(start, min(n, start + batch_size))), lo_hi, lo_hi, rng,
                                   return_info=True)
            counter["fallback"] += int(np.count_nonzero(info["fallback"]))
            yield from out

    attrs = {k: v for k, v in src.attrs.items() if k not in ("n_tiles", "store_format")}
    attrs.update(stain_method=RESTAIN, stain_target=restain_level(strength), stain_target_source="",
                 stain_params={"strength": float(strength), "alpha_range": list(lo_hi), "beta_range": list(lo_hi),
                               "seed": int(seed)},
                 software_version=_software_version(), patch_size=src.patch_size)
    codec, jpeg_quality = _source_codec(src.attrs)
    images: Any = tiles() if n else np.empty((0, src.patch_size, src.patch_size, 3), np.uint8)
    write_store(out_path, images, coords=src.coords, tissue_fraction=src.tissue_fraction, label=src.label,
                label_fraction=src.label_fraction, attrs=attrs, codec=codec, jpeg_quality=jpeg_quality)
    _set_attr(out_path, "stain_fallback_tiles", counter["fallback"])
    log.info("%s -> %s (re-stained, strength %g: alpha, beta in [%.2f, %.2f]): %d tiles, %d unchanged",
             store_path, out_path, strength, *lo_hi, n, counter["fallback"])
    return counter["fallback"]


def _source_codec(attrs: dict[str, Any]) -> tuple[str, int]:
    """(codec name, JPEG quality) of a source store (attrs 'codec' is a dict or a name)."""
    codec = attrs.get("codec") or "jpeg"
    if isinstance(codec, dict):
        return str(codec.get("name", "jpeg")), int(codec.get("quality") or 90)
    return str(codec), int(attrs.get("jpeg_quality") or 90)


def _set_attr(path: str | os.PathLike, key: str, value: Any) -> None:
    import zarr

    group = zarr.open_group(Path(path), mode="r+")
    group.attrs[key] = value


def _target_source(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "store":
        return f"{entry['path']}:{entry['index']}"
    return str(entry.get("path"))


TARGET_FRAME = (255, 140, 0)  # orange frame around the target tile
FALLBACK_FRAME = (150, 150, 150)  # grey frame: the method left this tile unchanged


def _short_store(path: str | os.PathLike) -> str:
    return Path(str(path).rstrip("/")).name.removesuffix(".zarr")


def montage_labels(
    methods: Sequence[str],
    sources: Sequence[tuple[str | os.PathLike, int]] | None = None,
    target_entry: dict[str, Any] | None = None,
    n_tiles: int | None = None,
) -> dict[str, Any]:
    """Text of a montage: ``rows`` (raw + methods), ``columns`` (one caption per tile: store name
    and tile index, from ``sources``), ``target`` (its caption) and ``title`` lines."""
    n = len(sources) if sources is not None else int(n_tiles or 0)
    columns = [f"{_short_store(p)}\n#{int(i)}" for p, i in sources] if sources is not None else [
        f"tile {k}" for k in range(n)]
    target, title = "target", ["Stain normalization montage"]
    if target_entry is not None:
        tid = target_entry.get("id", "?")
        if target_entry.get("kind") == "store":
            target = f"target\n{_short_store(target_entry['path'])} #{int(target_entry['index'])}"
        elif target_entry.get("path"):
            target = f"target\n{Path(str(target_entry['path'])).name}"
        where = ", ".join(f"{k} {target_entry[k]}" if k == "patient" else str(target_entry[k])
                          for k in ("center", "patient") if target_entry.get(k))
        title = [f"Target {tid} from {_target_source(target_entry)}" + (f" ({where})" if where else "")]
        if target_entry.get("method"):
            title.append(f"the {tid} variant stores use {target_entry['method']}; each row below fits its "
                         "method to this target")
    return {"rows": ["raw", *methods], "columns": columns, "target": target, "title": title, "notes": []}


def montage_layout(labels: dict[str, Any], tile_px: int = 96) -> dict[str, Any]:
    """Geometry of :func:`montage` for its ``labels`` (see :func:`montage_labels`): ``size``
    (width, height), ``cells[r][c]`` (x, y) of each tile (column 0 the target, row 0 raw),
    ``row_label_boxes``, ``column_boxes`` (caption boxes, column 0 the target's), ``title_xy``,
    ``font_px``."""
    from PIL import Image, ImageDraw

    from stainshift.qc import font, text_size

    fs = max(11, min(16, tile_px // 6))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f_text, f_bold = font(fs), font(fs, bold=True)
    line_h = text_size(probe, "Ag|#", f_text)[1] + 3
    gap, sep, margin = 4, 12, 8  # between tiles, after the target column, around the figure
    label_w = max(text_size(probe, r, f_bold)[0] for r in labels["rows"]) + 2 * gap
    n_cap_lines = max([1] + [len(c.split("\n")) for c in [labels["target"], *labels["columns"]]])
    title_h = len(labels["title"]) * (line_h + 2) + gap
    cap_h = n_cap_lines * line_h + gap
    x0, y0 = margin + label_w, margin + title_h + cap_h
    xs = [x0] + [x0 + tile_px + sep + c * (tile_px + gap) for c in range(len(labels["columns"]))]
    ys = [y0 + r * (tile_px + gap) for r in range(len(labels["rows"]))]
    title_w = max(text_size(probe, t, f_bold if i == 0 else f_text)[0] for i, t in enumerate(labels["title"]))
    width = max(xs[-1] + tile_px + margin, margin + title_w + margin)
    notes_y = ys[-1] + tile_px + gap
    height = notes_y + len(labels.get("notes", [])) * line_h + margin
    return {
        "size": (width, height), "cells": [[(x, y) for x in xs] for y in ys], "font_px": fs, "line_h": line_h,
        "row_label_boxes": [(margin, y, margin + label_w - gap, y + tile_px) for y in ys],
        "column_boxes": [(x, margin + title_h, x + tile_px, y0 - 2) for x in xs], "title_xy": (margin, margin),
        "notes_xy": (xs[min(1, len(xs) - 1)], notes_y),
    }


def montage(
    tiles: np.ndarray,
    target: np.ndarray,
    methods: Sequence[str],
    tile_px: int = 96,
    *,
    sources: Sequence[tuple[str | os.PathLike, int]] | None = None,
    target_entry: dict[str, Any] | None = None,
    models: dict[str, str | os.PathLike] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labelled grid: row "raw" then one row per method (row labels on the left); column 0 the
    target tile (orange frame, captioned with its store and index), then ``tiles`` captioned with
    their ``sources`` (store, index); a title naming the target id and where it came from
    (``target_entry``, a targets.json entry). A grey frame marks a tile the method left unchanged
    (fallback). Geometry: :func:`montage_layout`. ``models``: method -> model file (``neural``).

    Returns (uint8 RGB montage, fallback flags per method).
    """
    from PIL import Image, ImageDraw

    from stainshift.qc import fit_text, font, text_size

    def fit_px(img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(img).resize((tile_px, tile_px), Image.Resampling.BILINEAR))

    if sources is not None and len(sources) != len(tiles):
        raise ValueError(f"montage: {len(sources)} sources for {len(tiles)} tiles")
    rows = [np.asarray(tiles)]
    flags = {}
    unfit: list[str] = []
    own = (target_entry or {}).get("method")
    for method in methods:
        try:
            n = fitted_normalizer(method, target, (models or {}).get(method))
        except ValueError as err:
            if method == own:  # the target was selected because its own method fits it
                raise
            # another method's row on this target: say it cannot fit, show the tiles unchanged
            log.warning("montage: %s cannot fit target %s (%s); its row shows the raw tiles", method,
                        (target_entry or {}).get("id", "?"), err)
            unfit.append(f"{method} cannot fit this target: raw tiles shown")
            rows.append(np.asarray(tiles))
            flags[method] = np.ones(len(tiles), dtype=bool)
            continue
        rows.append(n.transform(tiles))
        flags[method] = np.asarray(n.last_flags)
    labels = montage_labels(methods, sources, target_entry, n_tiles=len(tiles))
    labels["notes"].extend(unfit)
    if any(f.any() for f in flags.values()):
        labels["notes"].append("grey frame: tile left unchanged by the method (blank, background or single stain)")
    lay = montage_layout(labels, tile_px)
    canvas = Image.new("RGB", lay["size"], (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    fs, line_h = lay["font_px"], lay["line_h"]
    f_text, f_bold = font(fs), font(fs, bold=True)
    ink = (20, 20, 20)
    tx, ty = lay["title_xy"]
    for i, line in enumerate(labels["title"]):
        draw.text((tx, ty), line, fill=ink, font=f_bold if i == 0 else f_text)
        ty += line_h + 2
    # the target: column 0 of the raw row, framed; the cells under it stay empty
    x, y = lay["cells"][0][0]
    draw.rectangle([x - 3, y - 3, x + tile_px + 2, y + tile_px + 2], fill=TARGET_FRAME)
    canvas.paste(Image.fromarray(fit_px(np.asarray(target, np.uint8))), (x, y))
    for r, imgs in enumerate(rows):
        for c, img in enumerate(imgs):
            x, y = lay["cells"][r][c + 1]
            if r > 0 and flags[methods[r - 1]][c]:
                draw.rectangle([x - 2, y - 2, x + tile_px + 1, y + tile_px + 1], outline=FALLBACK_FRAME, width=2)
            canvas.paste(Image.fromarray(fit_px(img)), (x, y))
    for text, (bx0, by0, bx1, by1) in zip(labels["rows"], lay["row_label_boxes"]):
        tw, th = text_size(draw, text, f_bold)
        draw.text((bx1 - tw, (by0 + by1 - th) // 2), text, fill=ink, font=f_bold)
    captions = [labels["target"], *labels["columns"]]
    for k, (text, (bx0, _, bx1, by1)) in enumerate(zip(captions, lay["column_boxes"])):
        lines = text.split("\n")
        yy = by1 - len(lines) * line_h
        for j, line in enumerate(lines):
            fnt = f_bold if k == 0 and j == 0 else f_text
            line = fit_text(draw, line, fnt, bx1 - bx0 + (6 if k == 0 else 2))
            tw = text_size(draw, line, fnt)[0]
            draw.text(((bx0 + bx1 - tw) // 2, yy), line, fill=TARGET_FRAME if k == 0 and j == 0 else ink, font=fnt)
            yy += line_h
    nx, ny = lay["notes_xy"]
    for note in labels["notes"]:
        draw.text((nx, ny), fit_text(draw, note, f_text, lay["size"][0] - nx - 8), fill=ink, font=f_text)
        ny += line_h
    return np.asarray(canvas), flags


def write_png_atomic(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write ``img`` (uint8 RGB) to ``path`` as PNG atomically (:mod:`stainshift.atomic`)."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return Path(path)


def sample_tiles(store_paths: Sequence[str | os.PathLike], n_tiles: int, seed: int = 0,
                 with_sources: bool = False) -> Any:
    """``n_tiles`` tiles spread over the stores (seeded), for montages; with ``with_sources`` also
    (store path, tile index) per tile: ``(tiles, sources)``."""
    from stainshift.store import PatchStore

    stores = [PatchStore.open(p) for p in store_paths]
    pool = [(s, i) for s in stores for i in range(len(s))]
    if not pool:
        raise ValueError("sample_tiles: the stores hold no tiles")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(n_tiles, len(pool)), replace=False)
    chosen = [pool[int(j)] for j in sorted(pick)]
    tiles = np.stack([s.read(i)[0] for s, i in chosen])
    if with_sources:
        return tiles, [(str(s.path), int(i)) for s, i in chosen]
    return tiles


__all__ = ["montage", "montage_labels", "montage_layout", "normalize_store", "sample_tiles", "write_png_atomic"]
