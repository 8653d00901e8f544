"""The three normalizers by name (:data:`METHODS`, :func:`get_normalizer`) and one-image helpers:
the stain matrix (:func:`stain_matrix`) and per-pixel concentrations (:func:`concentrations`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import kernels
from ._common import Normalizer, as_batch, is_torch
from .macenko import Macenko, od_torch
from .reinhard import Reinhard
from .vahadane import Vahadane, nn_lasso2_torch

METHODS: dict[str, type[Normalizer]] = {"reinhard": Reinhard, "macenko": Macenko, "vahadane": Vahadane}


def get_normalizer(name: str, **kwargs: Any) -> Normalizer:
    """A normalizer by method name (``reinhard``, ``macenko``, ``vahadane``)."""
    key = str(name).lower()
    if key not in METHODS:
        raise ValueError(f"unknown stain method {name!r}; known: {sorted(METHODS)}")
    return METHODS[key](**kwargs)


def stain_matrix(img: Any, method: str = "macenko", **kwargs: Any) -> Any:
    """(2,3) unit OD vectors, rows H and E, of one image (numpy or torch, like the input).

    Raises ValueError when the image is mostly background or has no two-stain estimate.
    """
    if method not in ("macenko", "vahadane"):
        raise ValueError(f"stain_matrix: method must be 'macenko' or 'vahadane', got {method!r}")
    est = get_normalizer(method, **kwargs)
    est.fit(img)
    return est.params.stain_matrix


def concentrations(img: Any, S: Any, io: float = 240.0, lam: float | None = None) -> Any:
    """Per-pixel stain concentrations (H,W,2) of one image for a (2,3) stain matrix ``S``.

    ``lam=None``: least squares (Macenko); a number: the non-negative lasso of Vahadane.
    """
    x, single = as_batch(img, "img")
    if not single:
        raise ValueError(f"concentrations: expected one image (H, W, 3), got {tuple(img.shape)}")
    h, w = x.shape[1:3]
    if is_torch(x):
        s = torch.as_tensor(np.array(S, dtype=np.float32), device=x.device) if not is_torch(S) else S.to(x.device, torch.float32)
        od = od_torch(x.reshape(1, -1, 3), io)
        if lam is None:
            conc = od @ torch.linalg.pinv(s.double()).float()
        else:
            conc = nn_lasso2_torch(od, s[None], lam)
        return conc.reshape(h, w, 2)
    s = np.asarray(S, dtype=np.float64)
    od = (np.log(io) - np.log(x.reshape(-1, 3).astype(np.float32) + 1.0)).astype(np.float32)
    if lam is None:
        return (od @ np.linalg.pinv(s).astype(np.float32)).reshape(h, w, 2)
    conc = np.empty((len(od), 2))
    kernels.nn_lasso_codes(od, s, float(lam), conc)
    return conc.astype(np.float32).reshape(h, w, 2)
