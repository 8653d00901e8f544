"""Seeds and procedural fields: counter-based hashes of absolute pixel coordinates, smooth random
fields on a lattice, and small float helpers (the image never depends on how it is cut into strips)."""
from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # scipy / scikit-image are imported where used: `CENTERS` stays cheap to import
    from scipy import sparse



#: Largest lattice-rows × columns table a field caches (float32 elements) to speed up strips.
_XCACHE_ELEMENTS = 1 << 21


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
