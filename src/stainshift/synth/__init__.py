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

from stainshift.synth.centers import (
    CENTERS,
    MACENKO_REF,
    RUIFROK_REF,
    CenterStyle,
    get_center,
    render_he,
)
from stainshift.synth.fields import derive_seed
from stainshift.synth.nuclei import NucleiScene, nuclei_scene
from stainshift.synth.scene import NUCLEUS_TYPES
from stainshift.synth.writer import (
    SlideInfo,
    auto_mask_downsample,
    generate_slide,
    generate_study,
    split_names,
    study_rows,
)

__all__ = [
    "CENTERS",
    "MACENKO_REF",
    "RUIFROK_REF",
    "CenterStyle",
    "NUCLEUS_TYPES",
    "NucleiScene",
    "SlideInfo",
    "auto_mask_downsample",
    "derive_seed",
    "generate_slide",
    "generate_study",
    "get_center",
    "nuclei_scene",
    "render_he",
    "split_names",
    "study_rows",
]
