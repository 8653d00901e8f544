"""Synthetic centers (stain vectors, intensities, glass tint, blur, JPEG quality) and Beer–Lambert
composition of H and E concentration maps into RGB."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


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
