"""Synthetic multi-center H&E whole-slide images with ground truth (the demo data of stainshift).

Every slide is built *physically*: per-pixel hematoxylin (H) and eosin (E) concentration maps are
rendered procedurally, then composed with a center's stain matrix by Beer–Lambert,
``I = Io * exp(-(C @ S))`` (``C`` = (h, e) concentrations, ``S`` = 2×3 optical-density stain matrix
with rows H and E, ``Io`` = the glass colour). The scene, all sizes in micrometres (so any mpp
looks the same at the same magnification) unless noted:

* **glass**: the center's background RGB (``Io`` per channel) with a ±1 % illumination gradient;
* **tissue islands**: a smooth random field (lattice ``size/40`` px) plus a detail octave
  (lattice max(20 µm, ``size/150`` px), so big slides do not get lacy edges),
  thresholded at a seeded quantile (35–55 % of the slide), pushed away from the slide border;
  small round vacuoles (≈ 30 µm) are cut out of normal tissue;
* **stroma**: eosin collagen "fibres", two families of domain-warped wavy bands (period 10 µm,
  warp lattice 35 µm) blended by a 60 µm field (mostly one direction per region) and broken up
  by a 10 µm field, with a 40 µm density field (loose vs dense stroma), a weak hematoxylin
  counter-stain;
* **nuclei**: hematoxylin ellipses on a jittered 11 µm grid, accepted by a 50 µm cellularity field:
  round lymphocyte/epithelial-like nuclei (semi-axes 2.6–4.2 µm) in cellular zones, elongated
  fibroblasts in stroma; a per-pixel chromatin texture and a soft edge;
* **tumour**: 2–4 irregular star-shaped polygons placed inside tissue (radius 5–12 % of the slide
  side, shrunk where tissue is narrow), with crowded (8.5 µm grid), larger (4–7.5 µm),
  pleomorphic, irregular, hyperchromatic nuclei with a nuclear rim and nucleoli, and paler, less
  fibrous, basophilic stroma;
* **scanner**: Gaussian optical blur (``blur_sigma`` px), additive sensor noise (``noise``, in
  8-bit grey levels, uniform with that std), JPEG compression at ``jpeg_quality``.

Outputs of :func:`generate_slide` (all written atomically, :mod:`stainshift.atomic`):

* a pyramidal, tiled, JPEG-compressed TIFF: each level its own top-level page (reduced levels
  ``SubFileType=1``, not SubIFDs), downsample 1, 4, 16, ... (block means), X/YResolution in
  pixels/cm, and an Aperio-style level-0 ImageDescription (``Aperio Image Library ...|AppMag =
  20|MPP = 0.5|...``), so OpenSlide reports vendor ``aperio`` and the mpp;
* a label mask PNG (uint8: 0 glass, 1 tissue/normal, 2 tumour). With ``mask_downsample = d`` the
  mask pixel ``(j, i)`` is the label of level-0 pixel ``(j*d + d//2, i*d + d//2)`` (centre
  sampling); the mask has ``ceil(size/d)`` pixels a side and records ``d`` and the slide size in
  PNG text chunks (``stainshift.mask_downsample``, ``stainshift.slide_size``);
* an ASAP XML file with the tumour polygons in level-0 pixels (integer vertices). The mask's
  tumour pixels are exactly ``skimage.draw.polygon`` of those vertices (pixel indices as
  coordinates), and tumour lies inside tissue by construction (tissue is forced inside polygons).

Determinism: all randomness derives from ``sha256("stainshift.synth|{seed}|{slide_id}")``;
per-pixel noise is a counter-based hash of absolute pixel coordinates and every field is evaluated
at absolute coordinates, so the image does not depend on how it is cut into strips. The slide is
rendered in horizontal strips of ≈ 2 M pixels and written with tifffile's tile iterator; only the
reduced levels (1/16 of level 0) are held in memory, so a 16384² slide needs a few hundred MB.

Centers (:data:`CENTERS`) differ the way real labs and scanners do: stain vectors (rotations of
the Macenko / Ruifrok reference vectors), stain intensities, background tint, blur and JPEG
quality. Each slide additionally jitters its center's intensities by ±6 % and its stain vectors by
≈ 2.5° (slide-to-slide variation inside a center, smaller than between centers). Unknown center
names raise ``ValueError`` listing the known ones.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from stainshift.atomic import atomic_path, write_text

if TYPE_CHECKING:  # scipy / scikit-image are imported where used: `CENTERS` stays cheap to import
    from scipy import sparse

log = logging.getLogger(__name__)

__all__ = [
    "CENTERS",
    "CenterStyle",
    "SlideInfo",
    "derive_seed",
    "generate_slide",
    "get_center",
    "render_he",
    "auto_mask_downsample",
    "generate_study",
    "study_rows",
    "NUCLEUS_TYPES",
    "NucleiScene",
    "nuclei_scene",
]

#: Pixels per level-0 rendering strip (memory knob; the output does not depend on it).
_STRIP_PIXELS = 1 << 21
#: Largest lattice-rows × columns table a field caches (float32 elements) to speed up strips.
_XCACHE_ELEMENTS = 1 << 21
#: Pyramid downsample between consecutive levels.
_LEVEL_FACTOR = 4
#: Width (µm, ≈ Gaussian sigma) of the soft transition from normal to tumour stroma.
_TUMOUR_SOFT_UM = 3.0
#: Nucleus type ids of :meth:`_Scene.nucleus_masks` (the ids and names of ``nuclei_hgsc``'s type
#: masks, seed 004's fibroblast / lymphocyte / epithelial-tumour classes): elongated stromal nuclei
#: are ``connective``, round nuclei of normal cellular zones ``inflammatory``, tumour nuclei ``neoplastic``.
NUCLEUS_TYPES: dict[int, str] = {1: "connective", 2: "inflammatory", 3: "neoplastic"}
#: Type id of each of :meth:`_Scene._make_nuclei`'s groups (round, elongated, tumour).
_GROUP_TYPES = (2, 1, 3)


# --------------------------------------------------------------------------------------------
# Centers and Beer–Lambert composition
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CenterStyle:
    """The look of one center (lab + scanner).

    Attributes:
        stain_matrix: (2, 3) optical-density stain vectors, rows H and E (normalised to unit
            length on construction), columns R, G, B.
        h_scale: multiplier of hematoxylin concentrations (staining time / dye strength).
        e_scale: multiplier of eosin concentrations.
        background: glass RGB (``Io`` per channel of Beer–Lambert, 0–255), i.e. the tint of empty
            glass as scanned.
        blur_sigma: Gaussian optical blur in level-0 pixels (focus quality).
        jpeg_quality: JPEG quality of the TIFF tiles (1–100).
        noise: standard deviation of additive sensor noise in 8-bit grey levels.
        description: one line on what the style imitates.
    """

    stain_matrix: NDArray[np.float64]
    h_scale: float
    e_scale: float
    background: tuple[float, float, float]
    blur_sigma: float
    jpeg_quality: int
    noise: float
    description: str = ""

    def __post_init__(self) -> None:
        m = np.asarray(self.stain_matrix, dtype=np.float64)
        if m.shape != (2, 3) or not np.all(np.isfinite(m)) or np.any(np.linalg.norm(m, axis=1) == 0):
            raise ValueError(f"CenterStyle.stain_matrix must be a finite (2, 3) matrix with non-zero rows, got {m!r}")
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        m.setflags(write=False)
        object.__setattr__(self, "stain_matrix", m)
        bg = tuple(float(v) for v in self.background)
        if len(bg) != 3 or not all(0 < v <= 255 for v in bg):
            raise ValueError(f"CenterStyle.background must be 3 values in (0, 255], got {self.background!r}")
        object.__setattr__(self, "background", bg)
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"CenterStyle.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.h_scale <= 0 or self.e_scale <= 0 or self.blur_sigma < 0 or self.noise < 0:
            raise ValueError("CenterStyle: h_scale, e_scale must be > 0 and blur_sigma, noise >= 0")


def _unit(v: Sequence[float]) -> list[float]:
    a = np.asarray(v, dtype=np.float64)
    return list(a / np.linalg.norm(a))


#: Reference OD vectors: Macenko et al. 2009 / torchstain ``HERef`` (H, E) and Ruifrok & Johnston 2001.
MACENKO_REF = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
RUIFROK_REF = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])

CENTERS: dict[str, CenterStyle] = {
    "center_a": CenterStyle(
        stain_matrix=MACENKO_REF,
        h_scale=1.0, e_scale=1.0, background=(243.0, 241.0, 244.0),
        blur_sigma=0.5, jpeg_quality=92, noise=1.5,
        description="reference lab: Macenko reference vectors, balanced staining, sharp scanner, high JPEG quality",
    ),
    "center_b": CenterStyle(
        stain_matrix=[_unit([0.68, 0.68, 0.27]), _unit([0.12, 0.86, 0.49])],
        h_scale=1.3, e_scale=0.8, background=(247.0, 240.0, 235.0),
        blur_sigma=0.9, jpeg_quality=80, noise=2.5,
        description="hematoxylin-heavy blue-purple nuclei, magenta eosin, warm glass, softer focus, JPEG q80",
    ),
    "center_c": CenterStyle(
        stain_matrix=[_unit([0.47, 0.76, 0.45]), _unit([0.08, 0.72, 0.69])],
        h_scale=0.7, e_scale=1.35, background=(236.0, 241.0, 248.0),
        blur_sigma=1.3, jpeg_quality=70, noise=3.5,
        description="pale reddish hematoxylin, strong orange-pink eosin, cool bluish glass, blurry scanner, JPEG q70",
    ),
    "center_d": CenterStyle(
        stain_matrix=[_unit([0.60, 0.75, 0.28]), _unit([0.30, 0.80, 0.52])],
        h_scale=1.45, e_scale=1.2, background=(241.0, 238.0, 225.0),
        blur_sigma=0.7, jpeg_quality=85, noise=2.0,
        description="over-stained dark slides, purple eosin, yellowed glass (aged lamp), JPEG q85",
    ),
}


def get_center(name: str) -> CenterStyle:
    """The :class:`CenterStyle` called ``name``; ``ValueError`` naming the known centers otherwise."""
    try:
        return CENTERS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic center {name!r}; known centers: {', '.join(sorted(CENTERS))}") from None


def render_he(h: ArrayLike, e: ArrayLike, stain_matrix: ArrayLike, io: float | Sequence[float] = 240.0) -> NDArray[np.uint8]:
    """Compose uint8 RGB from per-pixel H and E concentrations by Beer–Lambert.

    ``RGB = io * exp(-(h * S[0] + e * S[1]))`` rounded and clipped to 0..255, where ``S`` is the
    (2, 3) OD stain matrix (rows H, E; used as given, not re-normalised) and ``io`` the glass
    intensity (a scalar or one value per channel). ``h`` and ``e`` have the same shape (...,);
    the result has shape (..., 3).
    """
    h_arr = np.asarray(h, dtype=np.float32)
    e_arr = np.asarray(e, dtype=np.float32)
    if h_arr.shape != e_arr.shape:
        raise ValueError(f"render_he: h and e must have the same shape, got {h_arr.shape} and {e_arr.shape}")
    s = np.asarray(stain_matrix, dtype=np.float32)
    if s.shape != (2, 3):
        raise ValueError(f"render_he: stain_matrix must have shape (2, 3) (rows H, E), got {s.shape}")
    io_arr = np.broadcast_to(np.asarray(io, dtype=np.float32), (3,))
    od = h_arr[..., None] * s[0] + e_arr[..., None] * s[1]
    rgb = io_arr * np.exp(-od)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Seeds, hashing, procedural fields
# --------------------------------------------------------------------------------------------
def derive_seed(seed: int, slide_id: str | None = None) -> int:
    """A 63-bit seed from ``(seed, slide_id)`` via SHA-256 (stable across processes and platforms)."""
    digest = hashlib.sha256(f"stainshift.synth|{int(seed)}|{slide_id or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0xBF58476D1CE4E5B9)
_M4 = np.uint64(0x94D049BB133111EB)


def _hash64(key: int, x: NDArray, y: NDArray) -> NDArray[np.uint64]:
    """SplitMix64-style hash of integer coordinates (broadcast) and a key: counter-based noise."""
    with np.errstate(over="ignore"):
        z = (np.asarray(x).astype(np.uint64) * _M1) ^ (np.asarray(y).astype(np.uint64) * _M2) ^ np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * _M3
        z = (z ^ (z >> np.uint64(27))) * _M4
        return z ^ (z >> np.uint64(31))


def _hash_uniform(key: int, x: NDArray, y: NDArray) -> NDArray[np.float32]:
    """Uniform [0, 1) float32 from :func:`_hash64` (24 bits)."""
    return (_hash64(key, x, y) >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _keys_kernel(t: NDArray[np.float64]) -> NDArray[np.float64]:
    """Keys cubic convolution kernel (a = -0.5): C1-smooth interpolation."""
    t = np.abs(t)
    return np.where(
        t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0)
    )


class _Field:
    """A smooth random field on a lattice of spacing ``cell`` level-0 px (normalised to std 1).

    Evaluated at absolute level-0 coordinates by separable cubic (Keys) interpolation, so a row
    gets bit-identical values whichever strip it is rendered in; :meth:`points` (scattered
    positions, used for nucleus placement) agrees with :meth:`grid` up to float rounding.
    """

    _PAD = 3

    def __init__(self, rng: np.random.Generator, extent: float, cell: float, smooth: float = 1.5) -> None:
        self.cell = float(cell)
        n = int(math.ceil(extent / self.cell)) + 2 * self._PAD + 1
        from scipy import ndimage

        v = ndimage.gaussian_filter(rng.standard_normal((n, n)), smooth, mode="wrap")
        self.values = ((v - v.mean()) / (v.std() + 1e-12)).astype(np.float32)
        self._cache: dict[tuple[int, int, int], sparse.csr_matrix] = {}
        self._xcache: dict[tuple[int, int, int], NDArray[np.float32]] = {}

    def _taps(self, coords: NDArray) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Lattice indices (m, 4) and cubic weights (m, 4) of level-0 coordinates."""
        u = np.asarray(coords, dtype=np.float64) / self.cell + self._PAD
        idx = np.floor(u).astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
        w = _keys_kernel(u[:, None] - idx).astype(np.float32)
        return np.clip(idx, 0, self.values.shape[0] - 1), w

    def _weights(self, coords: NDArray) -> sparse.csr_matrix:
        from scipy import sparse

        idx, w = self._taps(coords)
        rows = np.repeat(np.arange(len(idx)), 4)
        return sparse.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(idx), self.values.shape[0]))

    def _weights_range(self, start: int, stop: int, step: int) -> sparse.csr_matrix:
        key = (start, stop, step)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = self._weights(np.arange(start, stop, step))
        return self._cache[key]

    def grid(self, ys: NDArray, x_range: tuple[int, int, int]) -> NDArray[np.float32]:
        """Values on the grid ``ys`` (level-0 rows) × ``range(*x_range)`` (level-0 columns)."""
        wy = self._weights(ys)
        if x_range in self._xcache:  # lattice rows pre-interpolated along x: one sparse product
            return np.asarray(wy @ self._xcache[x_range], dtype=np.float32)
        wx = self._weights_range(*x_range)
        n_cols = len(range(*x_range))
        if self.values.shape[0] * n_cols <= _XCACHE_ELEMENTS:
            self._xcache[x_range] = np.ascontiguousarray(np.asarray(wx @ self.values.T).T, dtype=np.float32)
            return np.asarray(wy @ self._xcache[x_range], dtype=np.float32)
        tmp = np.asarray(wy @ self.values)  # (len(ys), n)
        return np.ascontiguousarray(np.asarray(wx @ tmp.T).T, dtype=np.float32)

    def points(self, ys: NDArray, xs: NDArray) -> NDArray[np.float32]:
        """Values at scattered points (level-0 coordinates)."""
        iy, wy = self._taps(ys)
        ix, wx = self._taps(xs)
        vals = self.values[iy[:, :, None], ix[:, None, :]]
        return np.einsum("mij,mi,mj->m", vals, wy, wx).astype(np.float32)


def _box_blur_binary(mask: NDArray[np.bool_], r: int) -> NDArray[np.float32]:
    """Two box passes (width 2r+1) per axis of a binary mask, edge-padded, computed exactly in
    integers (so the result does not depend on where a strip is cut)."""
    a = mask.astype(np.int32)
    w = 2 * r + 1
    for axis in (0, 1):
        for _ in range(2):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (r + 1, r)
            cs = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.int32)
            a = np.take(cs, np.arange(w, cs.shape[axis]), axis=axis) - np.take(cs, np.arange(0, cs.shape[axis] - w), axis=axis)
    return (a.astype(np.float32) / np.float32(w**4)).astype(np.float32)


def _smoothstep(lo: float, hi: float, x: NDArray) -> NDArray[np.float32]:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def _sigmoid(x: NDArray) -> NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------
@dataclass
class _Nuclei:
    """Nucleus parameters (level-0 px), sorted by ``cy``."""

    cx: NDArray
    cy: NDArray
    a: NDArray
    b: NDArray
    theta: NDArray
    dark: NDArray
    irr: NDArray  # (n, 3) amplitudes of harmonics 2, 3, 5
    phase: NDArray  # (n, 3)
    rim: NDArray
    nucleolus: NDArray  # strength
    nucl_dx: NDArray
    nucl_dy: NDArray
    ident: NDArray  # int64 id for the chromatin hash
    grain: int  # chromatin clump size in px
    patch: int  # patch side in px

    def __len__(self) -> int:
        return len(self.cx)

    def select(self, idx: NDArray) -> "_Nuclei":
        arrays = {k: getattr(self, k)[idx] for k in self.__dataclass_fields__ if k not in ("grain", "patch")}
        return _Nuclei(**arrays, grain=self.grain, patch=self.patch)


def _concat_sorted(parts: list[dict[str, NDArray]], grain: int, patch: int, id_offset: int) -> _Nuclei:
    keys = ["cx", "cy", "a", "b", "theta", "dark", "irr", "phase", "rim", "nucleolus", "nucl_dx", "nucl_dy"]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    order = np.argsort(merged["cy"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    return _Nuclei(**merged, ident=np.arange(len(order), dtype=np.int64) + id_offset, grain=grain, patch=patch)


class _Scene:
    """All procedural ingredients of one slide; evaluates labels and renders strips."""

    def __init__(self, style: CenterStyle, size: int, mpp: float, entropy: int) -> None:
        self.size = int(size)
        self.mpp = float(mpp)
        rng = np.random.default_rng(entropy)
        self.key = int(rng.integers(0, 2**62))
        self.style = self._jitter(style, rng)
        um = 1.0 / self.mpp  # px per micrometre
        n = self.size
        self.tissue = _Field(rng, n, n / 40.0, 2.5)
        self.tissue_detail = _Field(rng, n, max(20 * um, n / 150.0), 1.5)  # edge roughness ∝ island size
        self.holes = _Field(rng, n, 12 * um, 1.3)
        self.warp1 = _Field(rng, n, 35 * um, 1.5)
        self.warp2 = _Field(rng, n, 35 * um, 1.5)
        self.mix = _Field(rng, n, 60 * um, 2.0)
        self.breakup = _Field(rng, n, 10 * um, 1.2)
        self.density = _Field(rng, n, 40 * um, 2.0)
        self.cellularity = _Field(rng, n, 50 * um, 2.0)
        self.illum = _Field(rng, n, n / 4.0, 1.0)
        self.theta1 = float(rng.uniform(0, np.pi))
        self.theta2 = self.theta1 + float(rng.uniform(np.pi / 4, 3 * np.pi / 4))
        self.fibre_period = 10.0 * um
        self.hole_threshold = 2.3
        # tissue threshold: a seeded share of a coarse grid of the slide is tissue
        g = min(256, n)
        coarse_idx = ((np.arange(g) + 0.5) * n / g).astype(np.int64)
        tf = self._tissue_value(coarse_idx, (0, n, 1))[:, coarse_idx]
        self.tissue_threshold = float(np.quantile(tf, 1.0 - rng.uniform(0.35, 0.55)))
        self.polygons = self._place_tumours(rng, (tf >= self.tissue_threshold), n / g)
        self.nuclei = self._make_nuclei(rng)

    # -- style -----------------------------------------------------------------------------
    @staticmethod
    def _jitter(style: CenterStyle, rng: np.random.Generator) -> CenterStyle:
        """Slide-to-slide variation inside a center: ±6 % intensities, ≈ 2.5° stain-vector tilt (N(0, 0.026) per OD component)."""
        m = np.asarray(style.stain_matrix) + rng.normal(0, 0.026, (2, 3))
        m = np.abs(m)
        return CenterStyle(
            stain_matrix=m,
            h_scale=style.h_scale * float(rng.uniform(0.94, 1.06)),
            e_scale=style.e_scale * float(rng.uniform(0.94, 1.06)),
            background=style.background,
            blur_sigma=style.blur_sigma,
            jpeg_quality=style.jpeg_quality,
            noise=style.noise,
            description=style.description,
        )

    # -- fields ----------------------------------------------------------------------------
    def _border(self, coords: NDArray) -> NDArray[np.float32]:
        n = self.size
        margin = 0.1 * n
        d = np.minimum(coords, n - 1 - coords).astype(np.float64)
        return (3.0 * np.clip((margin - d) / margin, 0, 1) ** 2).astype(np.float32)

    def _tissue_value(self, ys: NDArray, xr: tuple[int, int, int]) -> NDArray[np.float32]:
        xs = np.arange(*xr)
        t = self.tissue.grid(ys, xr) + 0.2 * self.tissue_detail.grid(ys, xr)
        t -= self._border(np.asarray(ys))[:, None] + self._border(xs)[None, :]
        return t

    def _tissue_points(self, ys: NDArray, xs: NDArray) -> NDArray[np.float32]:
        t = self.tissue.points(ys, xs) + 0.2 * self.tissue_detail.points(ys, xs)
        return t - self._border(ys) - self._border(xs)

    # -- tumour polygons -------------------------------------------------------------------
    def _place_tumours(self, rng: np.random.Generator, coarse_tissue: NDArray[np.bool_], cell: float) -> list[NDArray[np.int64]]:
        n = self.size
        from scipy import ndimage

        dist = ndimage.distance_transform_edt(coarse_tissue) * cell - 1.5 * cell
        g = coarse_tissue.shape[0]
        centres = (np.arange(g) + 0.5) * cell
        yy, xx = np.meshgrid(centres, centres, indexing="ij")
        free = np.ones_like(coarse_tissue)
        polygons: list[NDArray[np.int64]] = []
        for _ in range(int(rng.integers(2, 5))):
            radius = float(rng.uniform(0.05, 0.12)) * n
            while radius >= 0.015 * n:
                ok = (dist >= 1.35 * radius) & free
                if ok.any():
                    break
                radius *= 0.8
            else:
                break
            cand = np.flatnonzero(ok)
            pick = cand[int(rng.integers(len(cand)))]
            cy, cx = float(yy.flat[pick]), float(xx.flat[pick])
            k = int(rng.integers(16, 29))
            ang = np.sort((np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi)
                           + rng.uniform(-0.3, 0.3, k) * 2 * np.pi / k) % (2 * np.pi))
            p2, p3 = rng.uniform(0, 2 * np.pi, 2)
            p5 = rng.uniform(0, 2 * np.pi)
            r = radius * (1 + 0.22 * np.cos(2 * ang + p2) + 0.14 * np.cos(3 * ang + p3) + 0.08 * np.cos(5 * ang + p5)
                          + rng.uniform(-0.06, 0.06, k))
            r = np.clip(r, 0.45 * radius, 1.3 * radius)
            xs = np.clip(np.rint(cx + r * np.cos(ang)), 0, n - 1).astype(np.int64)
            ys = np.clip(np.rint(cy + r * np.sin(ang)), 0, n - 1).astype(np.int64)
            polygons.append(np.stack([xs, ys], axis=1))
            free &= (yy - cy) ** 2 + (xx - cx) ** 2 > (2.8 * radius) ** 2
        return polygons

    def tumour_rows(self, y0: int, y1: int) -> NDArray[np.bool_]:
        """Rasterised tumour polygons for level-0 rows ``y0:y1`` (all columns)."""
        from skimage.draw import polygon as draw_polygon

        out = np.zeros((y1 - y0, self.size), dtype=bool)
        for poly in self.polygons:
            if poly[:, 1].max() < y0 or poly[:, 1].min() >= y1:
                continue
            rr, cc = draw_polygon(poly[:, 1] - y0, poly[:, 0], shape=out.shape)
            out[rr, cc] = True
        return out

    def _in_tumour(self, xs: NDArray, ys: NDArray) -> NDArray[np.bool_]:
        from skimage.measure import points_in_poly

        inside = np.zeros(len(xs), dtype=bool)
        pts = np.stack([xs, ys], axis=1)
        for poly in self.polygons:
            inside |= points_in_poly(pts, poly.astype(np.float64))
        return inside

    # -- nuclei ----------------------------------------------------------------------------
    def _jittered_grid(self, rng: np.random.Generator, spacing: float, box: tuple[float, float, float, float]) -> tuple[NDArray, NDArray]:
        x0, y0, x1, y1 = box
        nx, ny = max(1, int((x1 - x0) / spacing)), max(1, int((y1 - y0) / spacing))
        gx, gy = np.meshgrid(x0 + np.arange(nx) * spacing, y0 + np.arange(ny) * spacing)
        xs = gx.ravel() + rng.uniform(0, spacing, gx.size)
        ys = gy.ravel() + rng.uniform(0, spacing, gy.size)
        keep = (xs < self.size - 1) & (ys < self.size - 1)
        return xs[keep], ys[keep]

    def _make_nuclei(self, rng: np.random.Generator) -> list[_Nuclei]:
        """Round normal, elongated (fibroblast) and tumour nuclei, each class sorted by row."""
        from skimage.measure import points_in_poly

        um = 1.0 / self.mpp
        n = self.size
        # normal tissue: lymphocyte / epithelial-like round nuclei in cellular zones, fibroblasts in stroma
        xs, ys = self._jittered_grid(rng, 11 * um, (0, 0, n, n))
        t = self._tissue_points(ys, xs)
        keep = (t >= self.tissue_threshold + 0.05) & (self.holes.points(ys, xs) < self.hole_threshold - 0.2)
        xs, ys = xs[keep], ys[keep]
        keep = ~self._in_tumour(xs, ys)
        xs, ys = xs[keep], ys[keep]
        cell = _sigmoid(2.5 * (self.cellularity.points(ys, xs) - 0.4))
        keep = rng.random(len(xs)) < 0.10 + 0.8 * cell
        xs, ys, cell = xs[keep], ys[keep], cell[keep]
        m = len(xs)
        round_ = rng.random(m) < cell
        a = np.where(round_, rng.uniform(2.6, 4.2, m), rng.uniform(4.5, 7.0, m)) * um
        b = np.where(round_, a / rng.uniform(1.0, 1.35, m), rng.uniform(1.1, 1.8, m) * um)
        theta = np.where(round_, rng.uniform(0, np.pi, m), self.theta1 + rng.normal(0, 0.35, m))
        normal = dict(
            cx=xs, cy=ys, a=a, b=b, theta=theta,
            dark=np.where(round_, rng.uniform(1.0, 1.35, m), rng.uniform(0.85, 1.1, m)),
            irr=rng.uniform(0.0, 0.05, (m, 3)), phase=rng.uniform(0, 2 * np.pi, (m, 3)),
            rim=np.zeros(m), nucleolus=np.zeros(m), nucl_dx=np.zeros(m), nucl_dy=np.zeros(m),
        )
        grain = max(1, round(0.8 * um))
        round_n = _concat_sorted([{k: v[round_] for k, v in normal.items()}], grain=grain,
                                 patch=2 * int(math.ceil(4.2 * um * 1.1)) + 3, id_offset=0)
        long_n = _concat_sorted([{k: v[~round_] for k, v in normal.items()}], grain=grain,
                                patch=2 * int(math.ceil(7.0 * um * 1.1)) + 3, id_offset=len(round_n))

        # tumour: crowded, large, pleomorphic, irregular, hyperchromatic nuclei with rims and nucleoli
        parts = []
        for poly in self.polygons:
            box = (float(poly[:, 0].min()), float(poly[:, 1].min()), float(poly[:, 0].max()) + 1, float(poly[:, 1].max()) + 1)
            txs, tys = self._jittered_grid(rng, 8.5 * um, box)
            inside = points_in_poly(np.stack([txs, tys], axis=1), poly.astype(np.float64))
            txs, tys = txs[inside], tys[inside]
            keep = rng.random(len(txs)) < 0.9
            txs, tys = txs[keep], tys[keep]
            k = len(txs)
            ta = rng.uniform(4.0, 7.5, k) * um
            parts.append(dict(
                cx=txs, cy=tys, a=ta, b=ta / rng.uniform(1.0, 1.7, k), theta=rng.uniform(0, np.pi, k),
                dark=rng.uniform(1.25, 1.9, k), irr=rng.uniform(0.03, 0.16, (k, 3)) * np.array([1.0, 0.8, 0.5]),
                phase=rng.uniform(0, 2 * np.pi, (k, 3)), rim=rng.uniform(0.15, 0.45, k),
                nucleolus=np.where(rng.random(k) < 0.5, rng.uniform(0.4, 0.9, k), 0.0),
                nucl_dx=rng.uniform(-0.3, 0.3, k), nucl_dy=rng.uniform(-0.3, 0.3, k),
            ))
        if not parts:
            parts = [{k: (np.zeros((0, 3)) if k in ("irr", "phase") else np.zeros(0)) for k in normal}]
        tumour_n = _concat_sorted(parts, grain=max(1, round(1.2 * um)), patch=2 * int(math.ceil(7.5 * um * 1.25)) + 3,
                                  id_offset=len(round_n) + len(long_n))
        return [round_n, long_n, tumour_n]

    def _stamp_nuclei(self, nuc: _Nuclei, y0: int, out: NDArray[np.float32]) -> None:
        """Max-composite nuclei hematoxylin into ``out`` (rows ``y0:y0+len(out)``, all columns)."""
        if len(nuc) == 0:
            return
        p = nuc.patch
        half = p // 2
        y1 = y0 + out.shape[0]
        lo = np.searchsorted(nuc.cy, y0 - half - 1, side="left")
        hi = np.searchsorted(nuc.cy, y1 + half + 1, side="right")
        grid = np.arange(p)
        f32 = np.float32
        harmonics = bool(np.any(nuc.irr))
        rim = bool(np.any(nuc.rim))
        nucleolus = bool(np.any(nuc.nucleolus))
        for s in range(lo, hi, 1024):
            sel = nuc.select(np.arange(s, min(hi, s + 1024)))
            ox = np.floor(sel.cx).astype(np.int64) - half
            oy = np.floor(sel.cy).astype(np.int64) - half
            px = ox[:, None, None] + grid[None, None, :]
            py = oy[:, None, None] + grid[None, :, None]
            du = (px - sel.cx[:, None, None]).astype(f32)
            dv = (py - sel.cy[:, None, None]).astype(f32)
            c = np.cos(sel.theta).astype(f32)[:, None, None]
            si = np.sin(sel.theta).astype(f32)[:, None, None]
            u = (du * c + dv * si) / sel.a.astype(f32)[:, None, None]
            w = (dv * c - du * si) / sel.b.astype(f32)[:, None, None]
            d = np.sqrt(u * u + w * w)
            if harmonics:
                phi = np.arctan2(w, u)
                rho = np.ones_like(d)
                for j, k in enumerate((2, 3, 5)):
                    rho += sel.irr[:, j, None, None].astype(f32) * np.cos(k * phi + sel.phase[:, j, None, None].astype(f32))
                d /= rho
            inside = _smoothstep(1.08, 0.86, d)
            g = nuc.grain
            chrom = _hash_uniform(self.key ^ 0x5A5A, px // g + sel.ident[:, None, None] * 7919, py // g)
            val = f32(0.68) + f32(0.32) * chrom
            if rim:
                val += sel.rim.astype(f32)[:, None, None] * np.exp(-(((d - f32(0.9)) / f32(0.09)) ** 2))
            if nucleolus:
                nd = (u - sel.nucl_dx.astype(f32)[:, None, None]) ** 2 + (w - sel.nucl_dy.astype(f32)[:, None, None]) ** 2
                val += sel.nucleolus.astype(f32)[:, None, None] * np.exp(-nd / f32(0.03))
            patch = sel.dark.astype(f32)[:, None, None] * val * inside
            for i in range(len(sel)):
                r0, c0 = int(oy[i]) - y0, int(ox[i])
                ra, rb = max(r0, 0), min(r0 + p, out.shape[0])
                ca, cb = max(c0, 0), min(c0 + p, out.shape[1])
                if ra >= rb or ca >= cb:
                    continue
                dst = out[ra:rb, ca:cb]
                np.maximum(dst, patch[i, ra - r0:rb - r0, ca - c0:cb - c0], out=dst)

    def nucleus_masks(self, y0: int, y1: int) -> tuple[NDArray[np.int32], NDArray[np.uint8]]:
        """Instance ids (0 = none) and types (:data:`NUCLEUS_TYPES`, 0 = none) of rows ``y0:y1``.

        A pixel belongs to a nucleus where its (harmonic-deformed) elliptical radius is below
        0.97 — the midpoint of the soft edge :meth:`_stamp_nuclei` draws; where nuclei overlap,
        the one whose centre is relatively closest (smallest radius) owns the pixel. Instance ids
        are the nucleus ``ident`` + 1, unique within the slide.
        """
        n = self.size
        inst = np.zeros((y1 - y0, n), dtype=np.int32)
        types = np.zeros((y1 - y0, n), dtype=np.uint8)
        best = np.full((y1 - y0, n), np.inf, dtype=np.float32)
        for type_id, nuc in zip(_GROUP_TYPES, self.nuclei):
            if len(nuc) == 0:
                continue
            p, half = nuc.patch, nuc.patch // 2
            lo = np.searchsorted(nuc.cy, y0 - half - 1, side="left")
            hi = np.searchsorted(nuc.cy, y1 + half + 1, side="right")
            grid = np.arange(p)
            for i in range(lo, hi):
                ox, oy = int(np.floor(nuc.cx[i])) - half, int(np.floor(nuc.cy[i])) - half
                du = (ox + grid[None, :] - nuc.cx[i]).astype(np.float32)
                dv = (oy + grid[:, None] - nuc.cy[i]).astype(np.float32)
                c, si = np.float32(math.cos(nuc.theta[i])), np.float32(math.sin(nuc.theta[i]))
                u = (du * c + dv * si) / np.float32(nuc.a[i])
                w = (dv * c - du * si) / np.float32(nuc.b[i])
                d = np.sqrt(u * u + w * w)
                if np.any(nuc.irr[i]):
                    phi = np.arctan2(w, u)
                    rho = 1.0 + sum(nuc.irr[i, j] * np.cos(k * phi + nuc.phase[i, j]) for j, k in enumerate((2, 3, 5)))
                    d = d / rho.astype(np.float32)
                r0, c0 = oy - y0, ox
                ra, rb = max(r0, 0), min(r0 + p, y1 - y0)
                ca, cb = max(c0, 0), min(c0 + p, n)
                if ra >= rb or ca >= cb:
                    continue
                dd = d[ra - r0:rb - r0, ca - c0:cb - c0]
                win = (dd < 0.97) & (dd < best[ra:rb, ca:cb])
                best[ra:rb, ca:cb][win] = dd[win]
                inst[ra:rb, ca:cb][win] = int(nuc.ident[i]) + 1
                types[ra:rb, ca:cb][win] = type_id
        return inst, types

    # -- labels and rendering --------------------------------------------------------------
    def render_rows(self, y0: int, y1: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        """Level-0 RGB rows ``y0:y1`` (all columns) and their labels (0 glass, 1 tissue, 2 tumour).

        Identical however the slide is cut into strips: every field is evaluated at absolute
        coordinates, blurs see ``halo`` real neighbouring rows, noise is a coordinate hash.
        """
        from scipy import ndimage

        st = self.style
        n = self.size
        um = 1.0 / self.mpp
        blur_r = int(4.0 * st.blur_sigma + 0.5) if st.blur_sigma > 0 else 0
        soft_r = max(1, int(round(_TUMOUR_SOFT_UM * um * 1.2)))  # two box passes of width 2r+1 ≈ Gaussian
        halo = blur_r + 2 * soft_r + 1
        h0, h1 = max(0, y0 - halo), min(n, y1 + halo)
        ys = np.arange(h0, h1)
        xr = (0, n, 1)
        xs = np.arange(n)

        tum = self.tumour_rows(h0, h1)
        tum_soft = np.zeros(tum.shape, dtype=np.float32)
        cols = np.flatnonzero(tum.any(axis=0))
        if len(cols):
            c0, c1 = max(0, cols[0] - 2 * soft_r - 1), min(n, cols[-1] + 2 * soft_r + 2)
            tum_soft[:, c0:c1] = _box_blur_binary(tum[:, c0:c1], soft_r)
        tval = self._tissue_value(ys, xr)
        hval = self.holes.grid(ys, xr)
        core = slice(y0 - h0, y1 - h0)
        labels = ((tval[core] >= self.tissue_threshold) & (hval[core] < self.hole_threshold)).astype(np.uint8)
        labels[tum[core]] = 2
        alpha = _smoothstep(self.tissue_threshold - 0.006, self.tissue_threshold + 0.006, tval)
        alpha *= 1.0 - _smoothstep(self.hole_threshold - 0.1, self.hole_threshold + 0.1, hval)
        del tval, hval
        alpha[tum] = 1.0

        # stroma: two families of domain-warped wavy fibres
        yy = ys[:, None].astype(np.float32)
        xx = xs[None, :].astype(np.float32)
        fib = np.zeros((len(ys), n), dtype=np.float32)
        mixw = _sigmoid(5.0 * self.mix.grid(ys, xr))  # mostly one fibre direction per region
        for theta, warp, wgt in ((self.theta1, self.warp1, mixw), (self.theta2, self.warp2, 1.0 - mixw)):
            phase = (xx * np.float32(math.cos(theta)) + yy * np.float32(math.sin(theta))) / np.float32(self.fibre_period)
            phase = phase + 2.2 * warp.grid(ys, xr)
            band = 0.5 + 0.5 * np.cos(np.float32(2 * np.pi) * phase)
            fib += wgt * band * band * band
        del mixw
        fib *= _smoothstep(-1.4, 0.2, self.breakup.grid(ys, xr))  # broken, discontinuous fibres
        dens = _sigmoid(1.5 * self.density.grid(ys, xr) + 0.3)
        g = max(1, int(um))
        gy = ys // g
        speck = _hash_uniform(self.key ^ 0x1111, np.arange(n // g + 1)[None, :], np.arange(gy[0], gy[-1] + 1)[:, None])
        speck = speck[gy - gy[0]][:, xs // g]
        e = 0.14 + 0.6 * fib * dens + 0.2 * dens + 0.06 * speck
        e = e * (1.0 - 0.45 * tum_soft) + tum_soft * (0.10 + 0.10 * speck)
        h = 0.05 + 0.04 * dens + 0.10 * tum_soft
        del fib, dens, speck

        nuc = np.zeros_like(h)
        for group in self.nuclei:
            self._stamp_nuclei(group, h0, nuc)
        e *= 1.0 - 0.5 * np.clip(nuc, 0, 1)
        h += nuc
        del nuc

        h *= alpha * np.float32(st.h_scale)
        e *= alpha * np.float32(st.e_scale)
        del alpha
        illum = 1.0 + 0.01 * self.illum.grid(ys, xr)
        z = _hash64(self.key ^ 0x2222, xs[None, :], np.arange(y0, y1)[:, None]) if st.noise > 0 else None
        rgb = np.empty((y1 - y0, n, 3), dtype=np.uint8)
        for ch, shift in enumerate((43, 22, 1)):  # planar channels: contiguous blurs
            od = h * np.float32(st.stain_matrix[0, ch]) + e * np.float32(st.stain_matrix[1, ch])
            plane = np.exp(-od) * (np.float32(st.background[ch]) * illum)
            del od
            if st.blur_sigma > 0:
                plane = ndimage.gaussian_filter(plane, st.blur_sigma, mode="nearest")
            plane = plane[y0 - h0:y1 - h0]
            if z is not None:
                u = ((z >> np.uint64(shift)) & np.uint64(0x1FFFFF)).astype(np.float32) * np.float32(2.0**-21)
                plane += (u - np.float32(0.5)) * np.float32(math.sqrt(12.0) * st.noise)
            rgb[..., ch] = np.clip(np.rint(plane), 0, 255)
        return rgb, labels


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

    def bands() -> Iterator[NDArray[np.uint8]]:
        """Level-0 bands of ``tile_size`` rows (the last may be shorter), rendered strip by strip;
        fills the mask and level 1 on the way."""
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

    def level0_tiles() -> Iterator[NDArray[np.uint8]]:
        for band in bands():
            for tx in range(0, n, tile_size):
                tile = band[:, tx:tx + tile_size]
                if tile.shape[:2] != (tile_size, tile_size):
                    tile = np.pad(tile, ((0, tile_size - tile.shape[0]), (0, tile_size - tile.shape[1]), (0, 0)), mode="edge")
                yield np.ascontiguousarray(tile)

    ppcm = 1e4 / mpp
    q = style.jpeg_quality
    common = dict(photometric="rgb", tile=(tile_size, tile_size), compression="jpeg",
                  compressionargs={"level": q}, resolutionunit="CENTIMETER", metadata=None,
                  software=False, maxworkers=workers)
    with atomic_path(out_tiff) as tmp:  # renamed onto out_tiff last: its presence means all three files are complete
        with tifffile.TiffWriter(tmp, bigtiff=n * n * 3 > 3 * 2**30) as tif:
            tif.write(level0_tiles(), shape=(n, n, 3), dtype=np.uint8, resolution=(ppcm, ppcm), subfiletype=0,
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


# --------------------------------------------------------------------------------------------
# Nuclei ground truth (seed 004: segmentation and nucleus classes)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class NucleiScene:
    """A rendered synthetic H&E field with per-nucleus ground truth.

    ``image`` (H, W, 3) uint8 as the center's scanner writes it (blur, noise, JPEG at the center's
    quality); ``instances`` (H, W) int32, 0 = no nucleus; ``types`` (H, W) uint8 with ids of
    :data:`NUCLEUS_TYPES`, 0 = no nucleus.
    """

    image: NDArray[np.uint8]
    instances: NDArray[np.int32]
    types: NDArray[np.uint8]
    center: str
    seed: int
    mpp: float
    class_names: tuple[str, ...] = tuple(NUCLEUS_TYPES.values())


def nuclei_scene(center: str, *, size: int = 512, mpp: float = 0.5, seed: int = 0, field_id: str = "nuclei") -> NucleiScene:
    """Render a ``size``² synthetic field of ``center`` with nucleus instance and type masks.

    The field is a small synthetic slide (same scene model as :func:`generate_slide`, seeded by
    :func:`derive_seed` of ``seed`` and ``field_id``), so centers differ exactly as their slides do.
    """
    from io import BytesIO

    from PIL import Image

    style = get_center(center)
    if size < 64:
        raise ValueError(f"nuclei_scene size must be >= 64 px, got {size}")
    scene = _Scene(style, size, mpp, derive_seed(seed, f"{center}|{field_id}"))
    rgb, _ = scene.render_rows(0, scene.size)
    buf = BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=style.jpeg_quality)
    image = np.asarray(Image.open(BytesIO(buf.getvalue())).convert("RGB"))
    inst, types = scene.nucleus_masks(0, scene.size)
    return NucleiScene(image=image, instances=inst, types=types, center=center, seed=seed, mpp=mpp)
