"""Export an encoder to a torch.export program (.pt2) for stainshift's `external:` entries.

Run this where the model's own packages live (timm, huggingface_hub, vendor code) — not needed
beside stainshift. It loads the model, exports its forward pass with a dynamic batch dimension,
checks the program against the eager model, and prints the file's sha256 and a config entry.

    python docs/export_encoder.py --timm resnet50.tv_in1k --size 224 --out weights/resnet50.pt2
    python docs/export_encoder.py --timm hf-hub:MahmoodLab/uni --kwargs '{"init_values": 1e-5}' --out weights/uni.pt2
    python docs/export_encoder.py --module my_pkg.models:build_encoder --size 224 --out weights/mine.pt2
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json

import torch


def build(args: argparse.Namespace) -> torch.nn.Module:
    kwargs = json.loads(args.kwargs)
    if args.timm:
        import timm  # only in the exporting environment

        return timm.create_model(args.timm, pretrained=True, num_classes=0, **kwargs)  # num_classes=0: pooled features
    module, _, attr = args.module.partition(":")
    return getattr(importlib.import_module(module), attr)(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--timm", help="a timm model name (pretrained weights from its hub)")
    source.add_argument("--module", help="package.module:function returning the model")
    parser.add_argument("--kwargs", default="{}", help="JSON keyword arguments for the model")
    parser.add_argument("--size", type=int, default=224, help="input tile size the program is exported for")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model = build(args).eval()
    x = torch.rand(2, 3, args.size, args.size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        torch.export.save(program, args.out)
        reloaded = torch.export.load(args.out).module()
        probe = torch.rand(5, 3, args.size, args.size)  # another batch size than exported with
        y = model(probe)
        diff = (y - reloaded(probe)).abs().max().item()
    sha = hashlib.sha256(open(args.out, "rb").read()).hexdigest()
    print(f"wrote {args.out}: output {tuple(y.shape[1:])} per tile, max |eager - exported| = {diff:.2e}, sha256 {sha}")
    print("config entry (set mean/std from the model card):")
    print(f"  - name: {args.out.rsplit('/', 1)[-1].removesuffix('.pt2')}\n    file: {args.out}\n"
          f"    input_size: {args.size}\n    output: {'pooled' if y.ndim == 2 else 'cls'}")


if __name__ == "__main__":
    main()
