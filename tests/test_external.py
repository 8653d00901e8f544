"""External encoders (stainshift.external): files the test writes itself — a stainshift encoder
exported to .pt2 and TorchScript, a state dict under torchvision's ResNet key names and one under
timm's ViT key names — give the in-memory model's features; bad files fail with the keys named."""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import pytest
import torch

from stainshift.external import (ExternalWeightsError, check_entries, file_sha256, import_encoder, map_keys,
                                 select_output)
from stainshift.models import MEAN, STD, build_encoder
from stainshift.train import load_encoder
from stainshift.validation import ConfigError

SPEC = {"arch": "resnet18", "width": 0.25, "small_input": True}


def torchvision_name(key: str) -> str:
    """torchvision's ResNet name of one of our keys (stem.0 = conv1, stem.1 = bn1, stages.i = layer{i+1},
    down = downsample), written independently of stainshift.external's mapping."""
    key = re.sub(r"^stem\.0\.", "conv1.", key)
    key = re.sub(r"^stem\.1\.", "bn1.", key)
    key = re.sub(r"^stages\.(\d)\.(\d+)\.down\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.", key)
    return re.sub(r"^stages\.(\d)\.", lambda m: f"layer{int(m[1]) + 1}.", key)


def timm_name(key: str) -> str:
    """timm's VisionTransformer name of one of our ViT keys."""
    for ours, theirs in ((r"^embed\.", "patch_embed.proj."), (r"^cls$", "cls_token"), (r"^pos$", "pos_embed"),
                         (r"\.attn\.in_proj_weight$", ".attn.qkv.weight"), (r"\.attn\.in_proj_bias$", ".attn.qkv.bias"),
                         (r"\.attn\.out_proj\.", ".attn.proj."), (r"\.mlp\.0\.", ".mlp.fc1."), (r"\.mlp\.2\.", ".mlp.fc2.")):
        key = re.sub(ours, theirs, key)
    return key


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory) -> tuple[torch.nn.Module, dict[str, Path]]:
    torch.manual_seed(0)
    enc = build_encoder(SPEC)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would show
        enc.train()
        enc(torch.rand(16, 3, 32, 32))
    enc.eval()
    tmp = tmp_path_factory.mktemp("external")
    x = torch.rand(4, 3, 32, 32)
    files = {"pt2": tmp / "enc.pt2", "torchscript": tmp / "enc.ts", "torchvision": tmp / "resnet18_tv.pth"}
    program = torch.export.export(enc, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(program, files["pt2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(enc, x), files["torchscript"])
    state = {torchvision_name(k): v for k, v in enc.state_dict().items()}
    state |= {"fc.weight": torch.zeros(1000, enc.out_dim), "fc.bias": torch.zeros(1000)}  # torchvision's classifier
    torch.save({"state_dict": {f"model.resnet.{k}": v for k, v in state.items()}}, files["torchvision"])  # Lightning-style
    return enc, files


def external_spec(kind: str, files: dict[str, Path]) -> dict:
    if kind == "torchvision":
        return {"arch": "external", "file": str(files[kind]), "encoder": SPEC, "layout": "torchvision",
                "strip_prefix": "model.resnet.", "mean": MEAN, "std": STD}
    return {"arch": "external", "file": str(files[kind]), "mean": (0, 0, 0), "std": (1, 1, 1)}  # norm is inside


@pytest.mark.parametrize("kind", ["pt2", "torchscript", "torchvision"])
def test_external_file_gives_the_in_memory_models_features(model_and_files, kind) -> None:
    enc, files = model_and_files
    ext = build_encoder(external_spec(kind, files)).eval()
    x = torch.rand(7, 3, 32, 32)  # another batch size than exported with
    with torch.no_grad():
        assert ext.out_dim == enc.out_dim
        torch.testing.assert_close(ext(x), enc(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["pt2", "torchscript", "torchvision"])
def test_encoder_file_stores_spec_and_checksum_not_weights(model_and_files, kind, tmp_path) -> None:
    enc, files = model_and_files
    spec = {k: v for k, v in external_spec(kind, files).items() if k != "arch"}
    path = import_encoder({"name": f"ext_{kind}", **spec}, tmp_path, {"method": f"ext_{kind}", "source": "a", "seed": 0})
    saved = torch.load(path, weights_only=True)
    assert saved["state_dict"] == {} and saved["spec"]["sha256"] == file_sha256(files[kind])
    assert saved["external"]["sha256"] == saved["spec"]["sha256"]
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(path)(x), enc(x), rtol=0, atol=1e-6)
    summary = (tmp_path / "train_summary.json").read_text()
    assert file_sha256(files[kind]) in summary and '"status": "external"' in summary


def test_changed_file_is_refused_on_load(model_and_files, tmp_path) -> None:
    _, files = model_and_files
    copy = tmp_path / "enc.ts"
    copy.write_bytes(files["torchscript"].read_bytes())
    path = import_encoder({"name": "ts", "file": str(copy)}, tmp_path / "run", {"source": "a", "seed": 0})
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(ExternalWeightsError, match="sha256 .* the file changed"):
        load_encoder(path)


def test_mismatched_state_dict_names_missing_unexpected_and_shapes(model_and_files, tmp_path) -> None:
    enc, _ = model_and_files
    state = {torchvision_name(k): v for k, v in enc.state_dict().items()}
    del state["layer1.0.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["bn1.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ExternalWeightsError) as err:
        build_encoder({"arch": "external", "file": str(tmp_path / "bad.pth"), "encoder": SPEC, "layout": "torchvision"})
    text = str(err.value)
    assert "missing keys (1): stages.0.0.conv1.weight" in text
    assert "unexpected keys (1): stages.4.0.conv1.weight" in text
    assert "stem.1.weight (3,) ≠ (16,)" in text and "bad.pth" in text


def test_pickled_objects_are_not_executed(tmp_path) -> None:
    # a Lightning-style checkpoint whose hyper-parameters are a Python object: weights_only=True refuses it
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": argparse.Namespace(lr=0.1)},
               tmp_path / "ckpt.pt")
    with pytest.raises(ExternalWeightsError, match="weights_only=True"):
        build_encoder({"arch": "external", "file": str(tmp_path / "ckpt.pt"), "encoder": SPEC})


def test_timm_vit_state_dict_maps_onto_our_vit(tmp_path) -> None:
    torch.manual_seed(1)
    vit_spec = {"arch": "vit_tiny", "image_size": 32, "patch": 8, "depth": 2}
    vit = build_encoder(vit_spec).eval()
    state = {timm_name(k): v for k, v in vit.state_dict().items()}
    state |= {"head.weight": torch.zeros(5, 192), "head.bias": torch.zeros(5)}
    torch.save(state, tmp_path / "vit.pth")
    ext = build_encoder({"arch": "external", "file": str(tmp_path / "vit.pth"), "encoder": vit_spec, "layout": "timm",
                         "mean": MEAN, "std": STD}).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), vit(x), rtol=0, atol=1e-5)


def test_tiles_are_resized_to_input_size(model_and_files) -> None:
    enc, files = model_and_files
    ext = build_encoder({**external_spec("torchscript", files), "input_size": 32}).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = enc(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True))
        torch.testing.assert_close(ext(x), expected, rtol=0, atol=1e-6)


def test_fixed_batch_export_fails_with_advice(tmp_path) -> None:
    enc = build_encoder(SPEC).eval()
    torch.export.save(torch.export.export(enc, (torch.rand(1, 3, 32, 32),)), tmp_path / "fixed.pt2")
    with pytest.raises(ExternalWeightsError, match="dynamic batch dimension"):
        build_encoder({"arch": "external", "file": str(tmp_path / "fixed.pt2")})


def test_select_output_modes() -> None:
    tokens = torch.arange(24.0).view(2, 3, 4)
    assert torch.equal(select_output(tokens, "auto"), tokens[:, 0])
    assert torch.equal(select_output(tokens, "mean_tokens"), tokens[:, 1:].mean(1))
    fmap = torch.rand(2, 5, 3, 3)
    assert torch.equal(select_output((fmap, None), "auto"), fmap.mean((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(2, 5, 3, 3\); output 'cls'"):
        select_output(fmap, "cls")


def test_init_starts_a_trainable_encoder_from_the_file(model_and_files) -> None:
    enc, files = model_and_files
    init = {"file": str(files["torchvision"]), "layout": "torchvision", "strip_prefix": ["model.resnet."]}
    fresh = build_encoder({**SPEC, "init": init})
    assert "init" not in fresh.spec  # the saved spec rebuilds without the file
    for (k, a), b in zip(enc.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ExternalWeightsError, match="state-dict file"):
        build_encoder({**SPEC, "init": {"file": str(files["pt2"])}})


def test_map_keys_drops_the_layouts_head_only() -> None:
    state = {"fc.weight": torch.zeros(1), "layer2.1.downsample.0.weight": torch.zeros(1), "conv1.weight": torch.zeros(1)}
    mapped, dropped = map_keys(state, "torchvision")
    assert set(mapped) == {"stages.1.1.down.0.weight", "stem.0.weight"} and dropped == ["fc.weight"]


def test_config_entries_are_checked_at_parse_time(model_and_files, tmp_path) -> None:
    _, files = model_and_files
    entries = [{"name": "simclr", "file": str(files["pt2"])},
               {"name": "a", "file": str(tmp_path / "missing.pt2")},
               {"name": "b", "file": str(files["torchvision"])},
               {"name": "c", "file": str(files["torchvision"]), "encoder": "vit_tiny", "layout": "torchvision"},
               {"name": "d", "file": str(files["pt2"]), "encoder": "resnet18"}]
    with pytest.raises(ConfigError) as err:
        check_entries(entries, reserved=["simclr"])
    text = str(err.value)
    for needle in ("external[0] ('simclr'): name 'simclr' is a built-in method", "external[1] ('a'): file",
                   "external[2] ('b'): a state_dict file needs 'encoder'", "external[3] ('c'): layout torchvision fits",
                   "external[4] ('d'): 'encoder' applies to state_dict files only"):
        assert needle in text
    ok = check_entries([{"name": "x", "file": str(files["pt2"])}])
    assert ok["x"]["format"] == "pt2" and ok["x"]["finetune"] == "probe"
