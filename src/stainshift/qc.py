"""QC pictures: per-slide thumbnail with tissue mask and kept tiles, store montages, `inspect`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from stainshift.store import PatchStore

__all__ = ["slide_qc_png", "montage", "inspect_store", "format_summary", "LABEL_COLOURS"]

# label -> outline colour: unknown blue, 0 green, 1 red, further classes cycle
LABEL_COLOURS = {-1: (40, 90, 255), 0: (0, 170, 0), 1: (230, 0, 0), 2: (255, 150, 0), 3: (170, 0, 200), 4: (0, 170, 190)}


def _colour(label: int) -> tuple[int, int, int]:
    if label in LABEL_COLOURS:
        return LABEL_COLOURS[label]
    keys = sorted(k for k in LABEL_COLOURS if k >= 0)
    return LABEL_COLOURS[keys[label % len(keys)]]


def _save_png(img: Image.Image, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    img.save(tmp)
    os.replace(tmp, path)


QC_MAX_SIDE = 2048  # larger tissue-decision images are box-reduced for the picture


def slide_qc_png(path: str | os.PathLike, thumb: np.ndarray, thumb_downsample: float, tissue: np.ndarray,
                 coords0: np.ndarray, tile_size0: float, labels: Sequence[int], title: str = "",
                 max_side: int = QC_MAX_SIDE, excluded: np.ndarray | None = None) -> None:
    """The image the tissue was decided on with its mask tinted cyan, an optional ``excluded`` zone
    (e.g. the ink zone) tinted red, and each kept tile outlined in its label colour. ``thumb`` and
    the masks are at ``thumb_downsample`` level-0 px per pixel; when longer than ``max_side`` they are
    reduced by an integer box factor (each tint then shades a pixel by its mask share)."""
    layers = [(tissue, (0, 200, 220))] + ([(excluded, (230, 0, 0))] if excluded is not None else [])
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
    img = Image.fromarray(base.astype(np.uint8))
    scale = 1.0
    if max(img.size) < 512:  # small thumbnails: enlarge so outlines stay visible
        scale = 512 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    f = scale / thumb_downsample
    side = max(1.0, tile_size0 * f)
    for (x, y), lab in zip(np.asarray(coords0).reshape(-1, 2), labels):
        draw.rectangle([x * f, y * f, x * f + side - 1, y * f + side - 1], outline=_colour(int(lab)), width=1)
    if title:
        draw.text((4, 4), f"{title}: {len(labels)} tiles", fill=(0, 0, 0))
    _save_png(img, path)


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
