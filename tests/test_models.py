"""Encoders: shapes, parameter counts of the seed architectures, spec round trip, views."""
from __future__ import annotations

import pytest
import torch

from stainshift.augment import BaselineAug, SimCLRViews, build_views, to_float
from stainshift.models import Classifier, build_encoder, count_parameters, mlp

torch.set_num_threads(1)


@pytest.mark.parametrize("spec, params, out_dim", [
    ("resnet18", 11_176_512, 512),                   # torchvision resnet18 without fc: 11.18 M
    ("resnet50", 23_508_032, 2048),                  # torchvision resnet50 without fc: 23.51 M
    ({"arch": "vit_tiny"}, 5_524_416, 192),          # seed 003: ≈ 5.5 M
])
def test_reference_parameter_counts(spec, params: int, out_dim: int) -> None:
    model = build_encoder(spec)
    assert count_parameters(model) == params and model.out_dim == out_dim


def test_narrow_resnet18_of_seed_000() -> None:
    model = build_encoder("resnet18_narrow")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert sorted({c.out_channels for c in convs}) == [32, 64, 128, 256]
    assert model.stages[-1][-1].conv2.out_channels == 256 and model.out_dim == 256
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())
    feats = model.forward_features(torch.rand(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64, 128, 256, 256]


@pytest.mark.parametrize("spec, size", [
    ({"arch": "resnet18", "width": 0.25, "small_input": True}, 32),
    ({"arch": "resnet34", "width": 0.125}, 64),
    ({"arch": "vit_tiny", "image_size": 32, "patch": 8, "depth": 2, "dim": 24, "heads": 3}, 32),
])
def test_forward_and_spec_round_trip(spec: dict, size: int) -> None:
    torch.manual_seed(0)
    model = build_encoder(spec).eval()
    x = torch.rand(3, 3, size, size)
    out = model(x)
    assert out.shape == (3, model.out_dim) and torch.isfinite(out).all()
    clone = build_encoder(model.spec).eval()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone(x), out)


def test_vit_interpolates_positions_and_rejects_bad_sizes() -> None:
    vit = build_encoder({"arch": "vit_tiny", "image_size": 32, "patch": 8, "depth": 1, "dim": 12, "heads": 2}).eval()
    assert vit(torch.rand(1, 3, 64, 64)).shape == (1, 12)
    with pytest.raises(ValueError, match="multiple of patch"):
        vit(torch.rand(1, 3, 30, 30))
    with pytest.raises(KeyError, match="unknown encoder arch 'vgg'"):
        build_encoder("vgg")


def test_heads() -> None:
    head = mlp(16, 32, 8, layers=3, bn=True)
    assert head(torch.rand(4, 16)).shape == (4, 8)
    clf = Classifier(build_encoder({"arch": "resnet18", "width": 0.125, "small_input": True}), 3)
    assert clf(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_views_shapes_ranges_and_identity() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for view in (BaselineAug(32), SimCLRViews(32), build_views("he", 32, None)):
        y = view(x)
        assert y.shape == (4, 3, 32, 32) and y.dtype == torch.float32 and 0 <= y.min() and y.max() <= 1
    off = SimCLRViews(32, crop_scale=(1.0, 1.0), jitter="none", blur_p=0.0, flip_p=0.0, rot90=False)
    assert torch.allclose(off(x), to_float(x), atol=1e-5)
    assert torch.equal(BaselineAug(32, p=0.0)(x), to_float(x))
    assert not torch.allclose(SimCLRViews(32)(x), SimCLRViews(32)(x))  # random views differ
    with pytest.raises(ValueError, match="jitter"):
        SimCLRViews(32, jitter="extreme")
