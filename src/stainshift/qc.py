"""QC pictures: per-slide thumbnail with tissue mask and kept tiles, store montages, `inspect`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stainshift.atomic import atomic_path
from stainshift.store import PatchStore

__all__ = ["slide_qc_png", "montage", "inspect_store", "format_summary", "LABEL_COLOURS", "QC_WIDTH", "font"]

# label -> outline colour: unknown blue, 0 green, 1 red, further classes cycle
LABEL_COLOURS = {-1: (40, 90, 255), 0: (0, 170, 0), 1: (230, 0, 0), 2: (255, 150, 0), 3: (170, 0, 200), 4: (0, 170, 190)}


def _colour(label: int) -> tuple[int, int, int]:
    if label in LABEL_COLOURS:
        return LABEL_COLOURS[label]
    keys = sorted(k for k in LABEL_COLOURS if k >= 0)
    return LABEL_COLOURS[keys[label % len(keys)]]


def _save_png(img: Image.Image, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp)


QC_MAX_SIDE = 2048  # larger tissue-decision images are box-reduced for the picture
QC_WIDTH = 1024  # QC picture width in px (the decision image is scaled to fit it)

MASK_TINT = (0, 200, 220)
EXCLUDED_TINT = (230, 0, 0)
CAPPED_COLOUR = (45, 45, 45)  # dashed: passed the mask but left out by the max_tiles cap
REJECTED_COLOUR = (120, 120, 120)  # dotted: read, below the tissue threshold on the pixel check
INK = (20, 20, 20)


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px; Pillow's default font otherwise."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        ttf = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / f"DejaVuSans{'-Bold' if bold else ''}.ttf"
        if ttf.is_file():
            return ImageFont.truetype(str(ttf), size)
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, fnt: Any) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn with font ``fnt``."""
    _, _, x1, y1 = draw.textbbox((0, 0), text, font=fnt)
    return int(np.ceil(x1)), int(np.ceil(y1))


def fit_text(draw: ImageDraw.ImageDraw, text: str, fnt: Any, width: int) -> str:
    """``text`` shortened in the middle with '…' until it is at most ``width`` px wide."""
    if text_size(draw, text, fnt)[0] <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        head = (keep + 1) // 2
        short = text[:head] + "…" + text[len(text) - (keep - head):]
        if text_size(draw, short, fnt)[0] <= width:
            return short
    return text[:1] + "…"


def _dashed_rect(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple[int, int, int], width: int,
                 dash: float, gap: float) -> None:
    x0, y0, x1, y1 = box
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        length = float(np.hypot(bx - ax, by - ay))
        t = 0.0
        while t < length:
            t1 = min(length, t + dash)
            draw.line([(ax + (bx - ax) * t / length, ay + (by - ay) * t / length),
                       (ax + (bx - ax) * t1 / length, ay + (by - ay) * t1 / length)], fill=colour, width=width)
            t = t1 + gap


def _outline(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple[int, int, int], style: str,
             width: int) -> None:
    if style == "solid":
        draw.rectangle(list(box), outline=colour, width=width)
    elif style == "dashed":
        _dashed_rect(draw, box, colour, width, dash=max(3.0, 3.0 * width), gap=max(2.0, 2.0 * width))
    else:  # dotted
        _dashed_rect(draw, box, colour, width, dash=max(1.0, width), gap=max(2.0, 2.0 * width))


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """``class_names[label]`` when known, ``label <label>`` otherwise (-1: unlabelled)."""
    if label < 0:
        return "unlabelled"
    if class_names and label < len(class_names):
        return str(class_names[label])
    return f"label {label}"


def _nice_length(limit: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``limit``."""
    if limit <= 0:
        return 0.0
    exp = np.floor(np.log10(limit))
    for m in (5.0, 2.0, 1.0):
        if m * 10**exp <= limit:
            return float(m * 10**exp)
    return float(10**exp)


def _um_text(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def slide_qc_png(path: str | os.PathLike, thumb: np.ndarray, thumb_downsample: float, tissue: np.ndarray,
                 coords0: np.ndarray, tile_size0: float, labels: Sequence[int], title: str = "",
                 max_side: int = QC_MAX_SIDE, excluded: np.ndarray | None = None, *,
                 capped: np.ndarray | None = None, rejected: np.ndarray | None = None,
                 max_tiles: int | None = None, class_names: Sequence[str] | None = None,
                 mpp0: float | None = None, width: int = QC_WIDTH,
                 excluded_name: str = "ink zone (excluded)") -> dict[str, Any]:
    """The tissue-decision image with its mask tinted cyan, an optional ``excluded`` zone tinted red,
    kept tiles outlined in their label colour, ``capped`` tiles (candidates left out by ``max_tiles``)
    dashed dark grey and ``rejected`` tiles (below the threshold on the pixel check) dotted grey; a
    title with the kept / capped / rejected counts, a legend of every overlay and, given the level-0
    ``mpp0``, a scale bar. ``thumb`` and the masks are at ``thumb_downsample`` level-0 px per pixel;
    longer than ``max_side`` they are box-reduced (a tint then shades a pixel by its mask share), then
    scaled to fit ``width`` px. Coordinates are level-0 top-left corners.

    Returns the picture's layout: ``size``, ``title`` lines, ``legend`` entries (label, colour,
    style, count), ``origin`` and ``scale`` (picture px = origin + level-0 px * scale), ``image_box``,
    ``um_per_px`` and ``scale_bar_um`` (None without ``mpp0``).
    """
    width = max(256, int(width))
    layers = [(tissue, MASK_TINT)] + ([(excluded, EXCLUDED_TINT)] if excluded is not None else [])
    shares = [m.astype(np.float32) for m, _ in layers]
    factor = max(1, int(np.ceil(max(thumb.shape[:2]) / float(max_side))))
    if factor > 1:
        h, w = thumb.shape[0] // factor, thumb.shape[1] // factor
        thumb = np.asarray(Image.fromarray(np.ascontiguousarray(thumb[: h * factor, : w * factor])).reduce(factor))
        shares = [sh[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3)) for sh in shares]
        thumb_downsample *= factor
    base = thumb.astype(np.int32)
    for share, (_, colour) in zip(shares, layers):
        a = np.round(0.3 * 256 * share).astype(np.int32)[..., None]  # 30 % tint where the mask is set
        base = base + (((np.array(colour, np.int32) - base) * a) >> 8)
    pic = Image.fromarray(base.astype(np.uint8))

    # layout: title band, image panel (fit to width, at most 1.5 x width tall), legend band
    margin = max(8, width // 96)
    fs = max(12, round(width / 68))
    f_title, f_text = font(fs + 2, bold=True), font(fs)
    line_h = text_size(ImageDraw.Draw(Image.new("RGB", (1, 1))), "Ag|µ", f_text)[1] + max(3, fs // 4)
    panel_w, panel_h = width - 2 * margin, int(1.5 * width)
    scale = min(panel_w / pic.width, panel_h / pic.height)
    size = (max(1, round(pic.width * scale)), max(1, round(pic.height * scale)))
    pic = pic.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    scale = pic.width / (base.shape[1])  # realised picture px per decision-image px
    f = scale / thumb_downsample  # picture px per level-0 px
    um_per_px = mpp0 / f if mpp0 else None

    labels = np.asarray(labels, np.int64).reshape(-1)
    coords0 = np.asarray(coords0, np.float64).reshape(-1, 2)
    capped_xy = np.zeros((0, 2)) if capped is None else np.asarray(capped, np.float64).reshape(-1, 2)
    rejected_xy = np.zeros((0, 2)) if rejected is None else np.asarray(rejected, np.float64).reshape(-1, 2)

    legend: list[dict[str, Any]] = [{"label": "tissue mask (decision image)", "colour": MASK_TINT, "style": "tint",
                                     "count": None}]
    if excluded is not None and bool(np.any(excluded)):
        legend.append({"label": excluded_name, "colour": EXCLUDED_TINT, "style": "tint", "count": None})
    for lab in sorted(set(labels.tolist())):
        n = int((labels == lab).sum())
        name = class_name(lab, class_names)
        name += f" (label {lab})" if not name.startswith("label") else ""
        legend.append({"label": f"kept: {name}", "colour": _colour(lab),
                       "style": "solid", "count": n})
    if capped is not None and (len(capped_xy) or max_tiles is not None):
        cap = f"max_tiles={max_tiles}" if max_tiles is not None else "max_tiles"
        legend.append({"label": f"capped: tissue candidate left out by {cap}", "colour": CAPPED_COLOUR,
                       "style": "dashed", "count": len(capped_xy)})
    if rejected is not None:
        legend.append({"label": "rejected: read, tissue below threshold", "colour": REJECTED_COLOUR,
                       "style": "dotted", "count": len(rejected_xy)})

    kept_by = ", ".join(f"{class_name(lab, class_names)}: {int((labels == lab).sum())}"
                        for lab in sorted(set(labels.tolist())))
    counts = f"kept {len(labels)}" + (f" ({kept_by})" if kept_by else "")
    if capped is not None:
        counts += f" · capped {len(capped_xy)}" + (f" (max_tiles {max_tiles})" if max_tiles is not None else "")
    if rejected is not None:
        counts += f" · rejected {len(rejected_xy)}"
    shown = f"shown at {1 / f:.3g} level-0 px per px" + (f" ({um_per_px:.3g} µm/px)" if um_per_px else "")
    title_lines = [t for t in (title, counts, shown) if t]

    # the legend band: entries flow left to right in equal columns, the scale bar in the last row
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sw = 2 * fs  # swatch width
    texts = [e["label"] + (f": {e['count']}" if e["count"] is not None else "") for e in legend]
    col_w = max(text_size(probe, t, f_text)[0] for t in texts) + sw + 3 * margin
    n_cols = max(1, min(len(texts), (width - 2 * margin) // col_w))
    col_w = (width - 2 * margin) // n_cols
    n_rows = (len(texts) + n_cols - 1) // n_cols
    title_h = margin + len(title_lines) * line_h + (line_h // 3)
    legend_h = margin + (n_rows + (1 if um_per_px else 0)) * line_h + margin + (line_h if um_per_px else 0)
    canvas = Image.new("RGB", (width, title_h + pic.height + margin + legend_h), (255, 255, 255))
    x_img = (width - pic.width) // 2
    y_img = title_h
    canvas.paste(pic, (x_img, y_img))
    draw = ImageDraw.Draw(canvas)

    side = max(1, round(tile_size0 * f))
    lw = 2 if side >= 12 else 1

    def box(x: float, y: float) -> list[int]:
        x0, y0 = x_img + round(x * f), y_img + round(y * f)
        return [x0, y0, x0 + side - 1, y0 + side - 1]

    for xy in rejected_xy:
        _outline(draw, box(*xy), REJECTED_COLOUR, "dotted", lw)
    for xy in capped_xy:
        _outline(draw, box(*xy), CAPPED_COLOUR, "dashed", lw)
    for xy, lab in zip(coords0, labels):
        _outline(draw, box(*xy), _colour(int(lab)), "solid", lw)
    draw.rectangle([x_img - 1, y_img - 1, x_img + pic.width, y_img + pic.height], outline=(170, 170, 170))

    y = margin
    for i, line in enumerate(title_lines):
        fnt = f_title if i == 0 and title else f_text
        draw.text((margin, y), fit_text(draw, line, fnt, width - 2 * margin), fill=INK, font=fnt)
        y += line_h

    y0 = y_img + pic.height + margin
    sh = max(8, fs - 2)
    for i, (entry, text) in enumerate(zip(legend, texts)):
        r, c = divmod(i, n_cols)
        x, y = margin + c * col_w, y0 + r * line_h
        sbox = [x, y + (line_h - sh) // 2 - 1, x + sw, y + (line_h - sh) // 2 - 1 + sh]
        if entry["style"] == "tint":
            tint = tuple(int(240 + (v - 240) * 0.3) for v in entry["colour"])  # as on light glass
            draw.rectangle(sbox, fill=tint, outline=(170, 170, 170))
        else:
            _outline(draw, sbox, entry["colour"], entry["style"], 2)
        draw.text((x + sw + margin // 2 + 2, y), fit_text(draw, text, f_text, col_w - sw - margin),
                  fill=INK, font=f_text)
    bar_um = None
    if um_per_px:
        bar_um = _nice_length(0.25 * pic.width * um_per_px)
        bar_px = bar_um / um_per_px
        yb = y0 + n_rows * line_h + line_h // 2
        xb = margin
        draw.rectangle([xb, yb, xb + bar_px, yb + max(3, fs // 4)], fill=INK)
        for xt in (xb, xb + bar_px):
            draw.line([(xt, yb - fs // 3), (xt, yb + max(3, fs // 4) + fs // 3)], fill=INK, width=2)
        draw.text((xb + bar_px + margin, yb - line_h // 2 + 2), f"scale bar: {_um_text(bar_um)}", fill=INK,
                  font=f_text)
    _save_png(canvas, path)
    return {"size": canvas.size, "title": title_lines, "legend": legend, "origin": (x_img, y_img), "scale": f,
            "image_box": (x_img, y_img, x_img + pic.width, y_img + pic.height), "um_per_px": um_per_px,
            "scale_bar_um": bar_um}


def montage(tiles: np.ndarray, *, columns: int = 8, captions: Sequence[str] | None = None,
            border_colours: Sequence[tuple[int, int, int]] | None = None, pad: int = 2) -> Image.Image:
    """A grid image of (n, S, S, 3) tiles with optional coloured borders and captions."""
    n = len(tiles)
    if n == 0:
        return Image.new("RGB", (64, 16), (255, 255, 255))
    s = tiles.shape[1]
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    cap_h = 12 if captions else 0
    cell = s + 2 * pad
    img = Image.new("RGB", (cols * cell, rows * (cell + cap_h)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = c * cell, r * (cell + cap_h)
        if border_colours is not None:
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=border_colours[i])
        img.paste(Image.fromarray(tile), (x + pad, y + pad))
        if captions:
            draw.text((x + 1, y + cell), str(captions[i])[: max(4, cell // 6)], fill=(0, 0, 0))
    return img


def inspect_store(path: str | os.PathLike, *, n: int = 32, indices: Sequence[int] | None = None, seed: int = 0,
                  montage_png: str | os.PathLike | None = None, columns: int = 8) -> dict[str, Any]:
    """Summary of a store and (optionally) a montage PNG of ``n`` random or the given tiles."""
    store = PatchStore.open(path)
    summary = store.summary()
    if montage_png is not None:
        if indices is None:
            rng = np.random.default_rng(seed)
            k = min(n, len(store))
            indices = sorted(rng.choice(len(store), size=k, replace=False).tolist()) if k else []
        idx = list(indices)
        tiles = store.read(idx) if idx else np.zeros((0, store.patch_size, store.patch_size, 3), np.uint8)
        caps = [f"{i}:{store.label[i]}" for i in idx]
        img = montage(tiles, columns=columns, captions=caps, border_colours=[_colour(int(store.label[i])) for i in idx])
        _save_png(img, montage_png)
        summary["montage"] = str(montage_png)
        summary["montage_indices"] = idx
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A two-column text table of a store summary."""
    rows = []
    for key, value in summary.items():
        if key == "montage_indices":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        rows.append((key, str(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
