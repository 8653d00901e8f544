"""Writing a synthetic slide (pyramidal JPEG TIFF with an Aperio description, label mask PNG, ASAP
XML) and a whole study (centers × slides + a sample sheet)."""
from __future__ import annotations

import logging
import math
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from stainshift.atomic import atomic_path, write_text
from stainshift.synth.centers import get_center
from stainshift.synth.fields import derive_seed
from stainshift.synth.scene import _Scene

log = logging.getLogger("stainshift.synth")


#: Pixels per level-0 rendering strip (memory knob; the output does not depend on it).
_STRIP_PIXELS = 1 << 21


#: Pyramid downsample between consecutive levels.
_LEVEL_FACTOR = 4


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
@dataclass
class SlideInfo:
    """What :func:`generate_slide` wrote."""

    slide_path: str
    mask_path: str
    xml_path: str
    center: str
    slide_id: str | None
    seed: int
    size: tuple[int, int]
    level_dimensions: list[tuple[int, int]]
    mpp: float
    tile_size: int
    jpeg_quality: int
    mask_downsample: int
    mask_size: tuple[int, int]
    tissue_fraction: float
    tumour_fraction: float
    n_tumours: int
    n_nuclei: int
    slide_seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The record as a plain dict."""
        return asdict(self)


def _block_mean(img: NDArray[np.uint8], f: int) -> NDArray[np.uint8]:
    """Downsample by ``f`` with block means (edge-padded to a multiple of ``f``)."""
    h, w = img.shape[:2]
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hh, ww = img.shape[0] // f, img.shape[1] // f
    v = img.reshape(hh, f, ww, f, img.shape[2]).mean(axis=(1, 3), dtype=np.float32)
    return np.rint(v).astype(np.uint8)


def _aperio_description(n: int, tile: int, quality: int, mpp: float, center: str, slide_id: str | None, seed: int) -> str:
    from stainshift import __version__

    app_mag = max(1, round(10.0 / mpp))
    return (
        f"Aperio Image Library v12.0.0 (stainshift.synth {__version__}: synthetic H&E)\n"
        f"{n}x{n} [0,0 {n}x{n}] ({tile}x{tile}) JPEG/RGB Q={quality}"
        f"|AppMag = {app_mag}|MPP = {mpp:.6g}|Center = {center}|SlideID = {slide_id or ''}|Seed = {seed}"
    )


def _write_xml(polygons: list[NDArray[np.int64]], out: Path) -> None:
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    for i, poly in enumerate(polygons):
        a = ET.SubElement(anns, "Annotation", Name=f"Tumor {i}", Type="Polygon", PartOfGroup="Tumor", Color="#F4FA58")
        coords = ET.SubElement(a, "Coordinates")
        for j, (x, y) in enumerate(poly):
            ET.SubElement(coords, "Coordinate", Order=str(j), X=str(int(x)), Y=str(int(y)))
    groups = ET.SubElement(root, "AnnotationGroups")
    grp = ET.SubElement(groups, "Group", Name="Tumor", PartOfGroup="None", Color="#F4FA58")
    ET.SubElement(grp, "Attributes")
    ET.indent(root)
    with atomic_path(out) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)


def _write_mask(mask: NDArray[np.uint8], out: Path, downsample: int, size: int) -> None:
    """Write the label mask PNG with its sampling recorded in text chunks (atomic)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("stainshift.labels", "0=glass,1=tissue,2=tumour")
    info.add_text("stainshift.mask_downsample", str(downsample))
    info.add_text("stainshift.slide_size", f"{size}x{size}")
    info.add_text("stainshift.sampling", "mask[j,i] = label of level-0 pixel (j*d + d//2, i*d + d//2)")
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(mask).save(tmp, format="PNG", pnginfo=info)


def _strip_rows(width: int, tile: int) -> int:
    """Rows per rendering strip: ≈ ``_STRIP_PIXELS / width``, a multiple of the level factor that
    either divides the tile height or is a multiple of it (so strips pack into tile rows)."""
    unit = tile * _LEVEL_FACTOR // math.gcd(tile, _LEVEL_FACTOR)
    want = _STRIP_PIXELS // max(1, width)
    if want >= unit:
        return want // unit * unit
    divisors = [r for r in range(_LEVEL_FACTOR, tile + 1, _LEVEL_FACTOR) if tile % r == 0 and r <= want]
    return max(divisors) if divisors else _LEVEL_FACTOR


def _check_slide_args(size: int, tile_size: int, levels: int, mpp: float, mask_downsample: int) -> None:
    """Raise ValueError naming the first out-of-range argument of :func:`generate_slide`."""
    if size < 256:
        raise ValueError(f"synth size must be >= 256 px, got {size}")
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"synth tile_size must be a positive multiple of 16, got {tile_size}")
    if levels < 1:
        raise ValueError(f"synth levels must be >= 1, got {levels}")
    if mpp <= 0:
        raise ValueError(f"synth mpp must be > 0, got {mpp}")
    if mask_downsample < 1:
        raise ValueError(f"synth mask_downsample must be >= 1, got {mask_downsample}")


def _bands(scene: _Scene, strip: int, tile_size: int, mask: NDArray[np.uint8], d: int,
           level1: NDArray[np.uint8] | None) -> Iterator[NDArray[np.uint8]]:
    """Level-0 bands of ``tile_size`` rows (the last may be shorter), rendered strip by strip;
    fills the label ``mask`` (downsample ``d``, centre sampling) and ``level1`` on the way."""
    n = scene.size
    pending: list[NDArray[np.uint8]] = []
    for y0 in range(0, n, strip):
        rows, labels = scene.render_rows(y0, min(n, y0 + strip))
        first = (d // 2 - y0) % d  # first row in this strip with y % d == d // 2
        sub = labels[first::d, d // 2::d]
        j0 = (y0 + first) // d
        mask[j0:j0 + sub.shape[0]] = sub
        if level1 is not None:
            small = _block_mean(rows, _LEVEL_FACTOR)
            level1[y0 // _LEVEL_FACTOR:y0 // _LEVEL_FACTOR + small.shape[0]] = small
        pending.append(rows)
        while pending and (sum(len(r) for r in pending) >= tile_size or y0 + strip >= n):
            buf = pending[0] if len(pending) == 1 else np.concatenate(pending)
            yield buf[:tile_size]
            pending = [buf[tile_size:]] if len(buf) > tile_size else []


def _level0_tiles(scene: _Scene, strip: int, tile_size: int, mask: NDArray[np.uint8], d: int,
                  level1: NDArray[np.uint8] | None) -> Iterator[NDArray[np.uint8]]:
    """Level-0 TIFF tiles in row-major order (edge tiles padded by edge replication)."""
    n = scene.size
    for band in _bands(scene, strip, tile_size, mask, d, level1):
        for tx in range(0, n, tile_size):
            tile = band[:, tx:tx + tile_size]
            if tile.shape[:2] != (tile_size, tile_size):
                tile = np.pad(tile, ((0, tile_size - tile.shape[0]), (0, tile_size - tile.shape[1]), (0, 0)), mode="edge")
            yield np.ascontiguousarray(tile)


def generate_slide(
    out_tiff: str | os.PathLike,
    out_mask: str | os.PathLike,
    out_xml: str | os.PathLike,
    *,
    center: str,
    seed: int,
    size: int,
    mpp: float = 0.5,
    tile_size: int = 256,
    levels: int = 3,
    mask_downsample: int = 1,
    slide_id: str | None = None,
    workers: int = 1,
) -> SlideInfo:
    """Generate one synthetic slide (pyramidal JPEG TIFF), its label mask PNG and ASAP XML.

    Args:
        out_tiff, out_mask, out_xml: output paths (parents are created; writes are atomic).
        center: a key of :data:`CENTERS`.
        seed: the study seed; mixed with ``slide_id`` by :func:`derive_seed` (SHA-256).
        size: level-0 width = height in px (≥ 256).
        mpp: level-0 micrometres per pixel (also sets AppMag = round(10 / mpp)).
        tile_size: TIFF tile side in px (a multiple of 16, JPEG-in-TIFF requirement).
        levels: pyramid levels, downsample 1, 4, 16, ...
        mask_downsample: label-mask downsample (centre sampling, see the module docstring).
        slide_id: the slide's id (seed mixing, recorded in the TIFF description).
        workers: JPEG encoder threads for tifffile.
    """
    import tifffile

    t_start = time.perf_counter()
    style = get_center(center)
    _check_slide_args(size, tile_size, levels, mpp, mask_downsample)
    out_tiff, out_mask, out_xml = Path(out_tiff), Path(out_mask), Path(out_xml)
    for p in (out_tiff, out_mask, out_xml):
        p.parent.mkdir(parents=True, exist_ok=True)

    entropy = derive_seed(seed, slide_id)
    scene = _Scene(style, size, mpp, entropy)
    n = scene.size
    strip = _strip_rows(n, tile_size)
    log.info("synth %s: center=%s size=%d mpp=%g tumours=%d nuclei=%d strip_rows=%d",
             slide_id or out_tiff.name, center, n, mpp, len(scene.polygons),
             sum(len(g) for g in scene.nuclei), strip)

    d = mask_downsample
    mask = np.empty((-(-n // d), -(-n // d)), dtype=np.uint8)

    dims = [n]
    for _ in range(1, levels):
        dims.append(-(-dims[-1] // _LEVEL_FACTOR))
    level1 = np.empty((dims[1], dims[1], 3), dtype=np.uint8) if levels > 1 else None

    ppcm = 1e4 / mpp
    q = style.jpeg_quality
    common = dict(photometric="rgb", tile=(tile_size, tile_size), compression="jpeg",
                  compressionargs={"level": q}, resolutionunit="CENTIMETER", metadata=None,
                  software=False, maxworkers=workers)
    with atomic_path(out_tiff) as tmp:  # renamed onto out_tiff last: its presence means all three files are complete
        with tifffile.TiffWriter(tmp, bigtiff=n * n * 3 > 3 * 2**30) as tif:
            tif.write(_level0_tiles(scene, strip, tile_size, mask, d, level1), shape=(n, n, 3), dtype=np.uint8, resolution=(ppcm, ppcm), subfiletype=0,
                      description=_aperio_description(n, tile_size, q, mpp, center, slide_id, entropy), **common)
            img = level1
            for k in range(1, levels):
                if k > 1:
                    img = _block_mean(img, _LEVEL_FACTOR)
                ds = n / img.shape[1]
                tif.write(img, resolution=(ppcm / ds, ppcm / ds), subfiletype=1, **common)
        _write_mask(mask, out_mask, d, n)
        _write_xml(scene.polygons, out_xml)
    counts = np.bincount(mask.ravel(), minlength=3)[:3]
    mask_size = (mask.shape[1], mask.shape[0])

    total = float(counts.sum())
    info = SlideInfo(
        slide_path=str(out_tiff), mask_path=str(out_mask), xml_path=str(out_xml), center=center,
        slide_id=slide_id, seed=int(seed), size=(n, n), level_dimensions=[(d, d) for d in dims], mpp=float(mpp),
        tile_size=tile_size, jpeg_quality=q, mask_downsample=mask_downsample, mask_size=mask_size,
        tissue_fraction=float((counts[1] + counts[2]) / total), tumour_fraction=float(counts[2] / total),
        n_tumours=len(scene.polygons), slide_seed=entropy, n_nuclei=sum(len(g) for g in scene.nuclei),
        seconds=round(time.perf_counter() - t_start, 3),
    )
    log.info("synth %s done in %.2f s: tissue %.3f tumour %.3f", slide_id or out_tiff.name, info.seconds,
             info.tissue_fraction, info.tumour_fraction)
    return info


# --------------------------------------------------------------------------------------------
# A study: several centers × slides + a sample sheet
# --------------------------------------------------------------------------------------------
def auto_mask_downsample(size: int) -> int:
    """Mask downsample for a slide side: 1 up to 8192 px, else the smallest power of 2 giving <= 4096 px."""
    if size <= 8192:
        return 1
    d = 2
    while -(-size // d) > 4096:
        d *= 2
    return d


def split_names(k: int) -> list[str]:
    """Splits of ``k`` slides of one center: the last is test, the one before val (k ≥ 3), rest train."""
    if k < 1:
        raise ValueError(f"slides per center must be >= 1, got {k}")
    if k == 1:
        return ["test"]
    if k == 2:
        return ["train", "test"]
    return ["train"] * (k - 2) + ["val", "test"]


def study_rows(centers: Sequence[str], slides_per_center: int) -> list[dict[str, str]]:
    """Slide ids, centers, patients and splits of a study (ids match config/slides.tsv: ``a_train``)."""
    rows = []
    splits = split_names(slides_per_center)
    for c in centers:
        get_center(c)
        short = c.removeprefix("center_")
        for i, sp in enumerate(splits):
            suffix = str(splits[:i].count(sp) + 1) if splits.count(sp) > 1 else ""
            rows.append({"slide_id": f"{short}_{sp}{suffix}", "center": c, "patient": f"{short}_p{i + 1}", "split": sp})
    return rows


def generate_study(
    outdir: str | os.PathLike,
    *,
    centers: Sequence[str] = ("center_a", "center_b", "center_c"),
    slides_per_center: int = 4,
    size: int = 3072,
    seed: int = 0,
    mpp: float = 0.5,
    tile_size: int = 256,
    levels: int = 3,
    mask_downsample: int = 1,
) -> tuple[Path, list[SlideInfo]]:
    """Generate ``slides_per_center`` slides per center into ``outdir`` plus ``outdir/slides.tsv``.

    Sheet paths are ``outdir/<slide>.tiff`` as given (relative paths stay relative to the current
    directory, the workflow's convention); the annotation column points to the ASAP XML.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    lines = ["slide_id\tpath\tcenter\tpatient\tsplit\tlabel\tannotation\tmpp"]
    for row in study_rows(centers, slides_per_center):
        sid = row["slide_id"]
        info = generate_slide(out / f"{sid}.tiff", out / f"{sid}_mask.png", out / f"{sid}.xml", center=row["center"],
                              seed=seed, size=size, mpp=mpp, tile_size=tile_size, levels=levels,
                              mask_downsample=mask_downsample, slide_id=sid)
        infos.append(info)
        lines.append("\t".join([sid, str(out / f"{sid}.tiff"), row["center"], row["patient"], row["split"], "",
                                str(out / f"{sid}.xml"), ""]))
    sheet = out / "slides.tsv"
    write_text(sheet, "\n".join(lines) + "\n")
    return sheet, infos
