"""The synthetic scene of one slide: tissue islands, stroma fibres, nuclei and tumours, rendered
strip by strip to RGB and labels, and the nucleus instance / type masks (the physics is described
in :mod:`stainshift.synth`).

Why one module of this size: one class whose methods share the scene's fields, polygons and nuclei;
splitting it would pass a dozen arrays between modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from stainshift.synth.centers import CenterStyle
from stainshift.synth.fields import (
    _box_blur_binary,
    _Field,
    _hash64,
    _hash_uniform,
    _sigmoid,
    _smoothstep,
)

#: Width (µm, ≈ Gaussian sigma) of the soft transition from normal to tumour stroma.
_TUMOUR_SOFT_UM = 3.0
#: Nucleus type ids of :meth:`_Scene.nucleus_masks` (the ids and names of ``nuclei_hgsc``'s type
#: masks, seed 004's fibroblast / lymphocyte / epithelial-tumour classes): elongated stromal nuclei
#: are ``connective``, round nuclei of normal cellular zones ``inflammatory``, tumour nuclei ``neoplastic``.
NUCLEUS_TYPES: dict[int, str] = {1: "connective", 2: "inflammatory", 3: "neoplastic"}
#: Type id of each of :meth:`_Scene._make_nuclei`'s groups (round, elongated, tumour).
_GROUP_TYPES = (2, 1, 3)


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
