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


def test_one_padding_rule_and_one_crop_rule() -> None:
    """Rotation pads by reflection (no black corners); the crop is square with side ≥ crop_min."""
    from stainshift.augment import Views

    torch.manual_seed(0)
    white = torch.full((4, 3, 32, 32), 250, dtype=torch.uint8)
    rotated = Views(32, rotation=20.0, rotation_p=1.0)(white)
    assert float(rotated.min()) > 0.9  # zero padding would leave dark corners
    from stainshift.augment import HEViews

    assert len(HEViews(64).geometric) == 0  # seed 003: H&E scaling only
    for crop, lo in ((Views(64, crop_min=0.9, crop_p=1.0).geometric[0], 0.9),
                     (SimCLRViews(64, crop_scale=(0.15, 1.0)).geometric[-1], 0.15**0.5),
                     (HEViews(64, crop_scale=(0.25, 1.0)).geometric[-1], 0.5)):
        box = crop.forward_parameters(torch.Size([200, 3, 64, 64]))["src"]  # (B, 4, 2) corners
        w = (box[:, 1, 0] - box[:, 0, 0] + 1) / 64
        h = (box[:, 2, 1] - box[:, 1, 1] + 1) / 64
        assert torch.allclose(w, h, atol=2 / 64)  # square
        assert float(w.min()) >= lo - 2 / 64 and float(w.max()) <= 1.0 and float(w.min()) < lo + 0.1


def test_shared_geometry_and_fast_ops() -> None:
    from stainshift.augment import ColorJitter, RandomRot90

    torch.manual_seed(1)
    x = torch.rand(6, 3, 8, 8)
    out = RandomRot90()(x)
    assert all(any(torch.equal(o, torch.rot90(i, k, dims=(-2, -1))) for k in range(4)) for o, i in zip(out, x))
    gray = torch.rand(6, 1, 8, 8).expand(6, 3, 8, 8)
    hued = ColorJitter(0.0, 0.0, 0.0, 0.4, p=1.0)(gray)
    assert torch.allclose(hued, gray, atol=1e-4)  # a hue rotation leaves the gray axis alone
    assert torch.allclose(ColorJitter(0.0, 0.0, 0.0, 0.0, p=1.0)(x), x)
    colour = torch.tensor([0.8, 0.3, 0.6]).view(1, 3, 1, 1).expand(6, 3, 8, 8)
    assert not torch.allclose(ColorJitter(0.0, 0.0, 0.0, 0.4, p=1.0)(colour), colour, atol=1e-3)
    views = BaselineAug(8, p=1.0, noise_std=0.0)
    u8 = (x * 255).to(torch.uint8)
    a, b, c = views.views(u8, u8, u8)
    assert torch.equal(a, b) and torch.equal(b, c)
    with pytest.raises(TypeError, match="uint8"):
        build_views("he", 8, None)(x)
    with pytest.raises(TypeError, match="views 'baseline'"):
        build_views("baseline", 8, {"nope": 1})
