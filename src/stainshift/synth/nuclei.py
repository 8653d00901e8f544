"""Nuclei ground truth fields (seed 004: segmentation and nucleus classes)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from stainshift.synth.centers import get_center
from stainshift.synth.fields import derive_seed
from stainshift.synth.scene import NUCLEUS_TYPES, _Scene


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
