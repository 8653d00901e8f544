"""Encoders stainshift did not train: loaded from local files, evaluated through the same protocol.

A config ``external:`` entry (``docs/external_encoders.md``) names a file and how to read it:

- ``format: pt2`` — a ``torch.export`` program (``torch.export.load``; export it with a dynamic
  batch dimension); ``torchscript`` — ``torch.jit.load``; ``state_dict`` — tensors read with
  ``torch.load(weights_only=True)`` (no pickle code runs) onto one of stainshift's architectures
  (``arch``), with the file's key names given by ``layout``: ``stainshift`` (ours), ``torchvision``
  (``resnet18/34/50``: ``conv1``, ``layer1.0.bn1``, ``downsample``, ``fc``) or ``timm`` (``vit_*``:
  ``patch_embed.proj``, ``blocks.i.attn.qkv``, ``cls_token``, ``pos_embed``). ``auto`` picks the
  format from the suffix (``.pt2``; ``.ts`` / ``.jit`` / ``.torchscript``; anything else: state dict).
- ``input_size`` (tiles are resized to it, bilinear with antialiasing; null = as tiled, or the size
  a ``.pt2`` program was exported with when its height and width are fixed), ``mean`` /
  ``std`` (default ImageNet's, what most public weights expect), ``output``: ``auto`` (a (B, D)
  output as is, (B, T, D) → the CLS token, (B, C, H, W) → global average pool), ``pooled``,
  ``cls``, ``mean_tokens`` (mean of the patch tokens) or ``avgpool``.

:class:`ExternalEncoder` is the encoder arch ``external``: it takes float [0, 1] tiles like every
stainshift encoder, so ``embed`` / ``finetune`` / ``predict`` use it unchanged. Its ``encoder.pt``
holds the spec — file, format, sha256 — and no weights: the file is read again, and its sha256
checked, wherever the encoder is loaded. :func:`load_init` maps a state-dict file onto a model
(``pretrain.<method>.init``: continue training from public weights).

Why one module of this size: it owns one concept (an encoder from a foreign file) across four
formats that share the input / output conventions, the checks and the provenance (sha256); a module
per format would repeat them.
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import pickle
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stainshift.models import build_encoder, register_encoder

log = logging.getLogger("stainshift.external")

FORMATS = ("pt2", "torchscript", "state_dict")
LAYOUTS = ("stainshift", "torchvision", "timm")
OUTPUTS = ("auto", "pooled", "cls", "mean_tokens", "avgpool")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: keys of a layout that are not part of the encoder (classifier heads) and are dropped by default
DEFAULT_IGNORE = {"torchvision": ["fc.*"], "timm": ["head.*", "head_drop.*", "fc_norm.*"], "stainshift": []}
_TORCHSCRIPT_SUFFIXES = (".ts", ".jit", ".torchscript")


class ExternalWeightsError(ValueError):
    """An external weights file does not fit: names the file, the missing, unexpected and
    mismatched keys, or the changed checksum."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_format(path: str | os.PathLike, fmt: str = "auto") -> str:
    """``fmt`` unless ``auto``: ``.pt2`` → pt2, ``.ts`` / ``.jit`` / ``.torchscript`` → torchscript,
    anything else → state_dict."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"unknown external format {fmt!r} (expected auto or one of {FORMATS})")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".pt2":
        return "pt2"
    if suffix in _TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    return "state_dict"


# ---------------------------------------------------------------------------------------------
# state dicts: reading, key layouts, strict loading with a clear error
# ---------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file, read with ``weights_only=True``; a dict that nests them under
    ``state_dict`` / ``model`` / ``teacher`` (Lightning, stainshift's ``encoder.pt``, DINO) is unwrapped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as err:
        raise ExternalWeightsError(
            f"{path}: not readable as a plain state dict with torch.load(weights_only=True) ({err}). "
            "It holds Python objects besides tensors; in an environment you trust, re-save only its tensors: "
            "torch.save(ckpt['state_dict'], 'weights.pt') (docs/external_encoders.md).") from err
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "teacher") if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ExternalWeightsError(f"{path}: holds no state dict (a mapping of names to tensors)")
    tensors = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not tensors:
        raise ExternalWeightsError(f"{path}: holds no tensors")
    return tensors


_TORCHVISION_RULES: list[tuple[str, str]] = [
    (r"^conv1\.", "stem.0."),
    (r"^bn1\.", "stem.1."),
    (r"^layer(\d)\.(\d+)\.downsample\.", "stages.{0}.{1}.down."),
    (r"^layer(\d)\.(\d+)\.", "stages.{0}.{1}."),
]
_TIMM_RULES: list[tuple[str, str]] = [
    (r"^patch_embed\.proj\.", "embed."),
    (r"^cls_token$", "cls"),
    (r"^pos_embed$", "pos"),
    (r"^blocks\.(\d+)\.attn\.qkv\.weight$", "blocks.{0}.attn.in_proj_weight"),
    (r"^blocks\.(\d+)\.attn\.qkv\.bias$", "blocks.{0}.attn.in_proj_bias"),
    (r"^blocks\.(\d+)\.attn\.proj\.", "blocks.{0}.attn.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", "blocks.{0}.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", "blocks.{0}.mlp.2."),
]


def _apply_rules(key: str, rules: list[tuple[str, str]], shift_stage: bool) -> str:
    for pattern, target in rules:
        m = re.match(pattern, key)
        if m:
            groups = list(m.groups())
            if shift_stage and groups:
                groups[0] = str(int(groups[0]) - 1)  # torchvision's layer1..4 are our stages 0..3
            return target.format(*groups) + key[m.end():]
    return key


def map_keys(state: Mapping[str, torch.Tensor], layout: str, strip_prefix: Sequence[str] = (),
             ignore_keys: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a state dict's keys from ``layout`` to stainshift's names: strip each of
    ``strip_prefix`` (e.g. ``model.resnet.``), drop keys matching ``ignore_keys`` (glob patterns
    on the stripped name; default: the layout's classifier head), rename. Returns (state, dropped)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown key layout {layout!r} (expected one of {LAYOUTS})")
    ignore = list(DEFAULT_IGNORE[layout] if ignore_keys is None else ignore_keys)
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        for prefix in strip_prefix:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if any(fnmatch.fnmatchcase(key, pat) for pat in ignore):
            dropped.append(key)
            continue
        if layout == "torchvision":
            key = _apply_rules(key, _TORCHVISION_RULES, shift_stage=True)
        elif layout == "timm":
            key = _apply_rules(key, _TIMM_RULES, shift_stage=False)
        out[key] = value
    return out, dropped


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_mapped(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` strictly, with an error that names the file and every
    missing, unexpected and shape-mismatched key (persistent buffers such as BatchNorm's
    ``num_batches_tracked`` may be absent from older files)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(own[k].shape)}" for k in state
              if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{source}: the weights do not fit the architecture {getattr(model, 'spec', {}).get('arch')!r}"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {_listing(shapes)}")
        lines.append("  Check arch / width, layout, strip_prefix and ignore_keys (docs/external_encoders.md).")
        raise ExternalWeightsError("\n".join(lines))
    model.load_state_dict({**{k: v for k, v in own.items() if k not in state}, **state})


def load_init(model: nn.Module, init: Mapping[str, Any] | str) -> None:
    """Load the weights of ``init`` (a state-dict file: ``{file, layout, strip_prefix,
    ignore_keys, sha256}`` or just its path) into ``model`` — where ``pretrain.<method>.init``
    starts training from (e.g. SimCLR continued from Ciga et al.'s weights)."""
    init = {"file": init} if isinstance(init, str) else dict(init)
    path = Path(init["file"])
    if not path.is_file():
        raise FileNotFoundError(f"encoder init file {path} does not exist (key 'init.file')")
    if resolve_format(path, init.get("format", "auto")) != "state_dict":
        raise ExternalWeightsError(f"{path}: init takes a state-dict file (pt2 / TorchScript programs have no "
                                   "key names to map onto a stainshift architecture)")
    _check_sha(path, init.get("sha256"))
    state, dropped = map_keys(read_state_dict(path), init.get("layout", "stainshift"), _prefixes(init),
                              init.get("ignore_keys"))
    load_mapped(model, state, str(path))
    log.info("encoder initialised from %s (%d tensors; dropped %d: %s)", path, len(state), len(dropped),
             _listing(dropped, 5) or "none")


def _prefixes(entry: Mapping[str, Any]) -> list[str]:
    value = entry.get("strip_prefix") or []
    return [value] if isinstance(value, str) else list(value)


def _check_sha(path: Path, expected: str | None) -> None:
    if expected and file_sha256(path) != expected:
        raise ExternalWeightsError(
            f"{path}: sha256 {file_sha256(path)[:16]}… ≠ {expected[:16]}… recorded when it was imported; "
            "the file changed — re-run the workflow so every run uses the new file")


# ---------------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------------
def select_output(out: Any, mode: str) -> torch.Tensor:
    """(B, D) features from a model's output: a tuple/list → its first item; then ``mode``:
    ``pooled`` (B, D) as is, ``cls`` (B, T, D)[:, 0], ``mean_tokens`` (B, T, D)[:, 1:].mean(1),
    ``avgpool`` (B, C, H, W).mean((2, 3)); ``auto`` picks by the number of dimensions."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out):
        raise TypeError(f"the external model returned {type(out).__name__}, not a tensor (or a tuple of them)")
    if mode == "auto":
        mode = {2: "pooled", 3: "cls", 4: "avgpool"}.get(out.ndim, "")
    need = {"pooled": 2, "cls": 3, "mean_tokens": 3, "avgpool": 4}
    if mode not in need or out.ndim != need[mode]:
        raise ValueError(f"the external model returned shape {tuple(out.shape)}; output {mode or 'auto'!r} needs "
                         f"{'/'.join(f'{k}: {v}-D' for k, v in need.items())}")
    if mode == "cls":
        return out[:, 0]
    if mode == "mean_tokens":
        return out[:, 1:].mean(1)
    if mode == "avgpool":
        return out.mean((2, 3))
    return out


class ExternalEncoder(nn.Module):
    """An encoder read from a local file (see the module docstring). Input float [0, 1] tiles
    (B, 3, H, W) → resize to ``input_size`` → (x − mean) / std → the model → :func:`select_output`.

    ``weights_in_file``: ``encoder.pt`` stores the spec only (:func:`stainshift.train.save_encoder`).
    A ``torch.export`` program cannot switch train/eval mode: it stays as exported (eval), also
    under full fine-tuning (BatchNorm statistics and dropout frozen)."""

    weights_in_file = True

    def __init__(self, file: str, format: str = "auto", sha256: str | None = None, encoder: Any = None,
                 layout: str = "stainshift", strip_prefix: str | Sequence[str] = (),
                 ignore_keys: Sequence[str] | None = None, input_size: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 output: str = "auto", name: str = "") -> None:
        super().__init__()
        path = Path(file)
        label = f"external encoder {name!r} ({path})" if name else f"external encoder {path}"
        if not path.is_file():
            raise FileNotFoundError(f"{label}: the file does not exist")
        if output not in OUTPUTS:
            raise ValueError(f"{label}: unknown output {output!r} (expected one of {OUTPUTS})")
        _check_sha(path, sha256)
        self.format = resolve_format(path, format)
        self.output = output
        self.input_size = int(input_size) if input_size else None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.model, exported_size = _load_model(path, self.format, encoder, layout,
                                                _prefixes({"strip_prefix": strip_prefix}), ignore_keys, label)
        if self.input_size is None and exported_size:  # a program exported with a fixed tile size
            self.input_size = exported_size
        self.out_dim = self._probe_out_dim(label)

    def _probe_out_dim(self, label: str) -> int:
        size = self.input_size or 224
        was_training = self.training
        self.train(False)  # no BatchNorm statistics updated by the test batch
        with torch.no_grad():
            try:
                feats = self(torch.full((2, 3, size, size), 0.5))
            except Exception as err:  # the model's own error, with what we fed it
                raise ExternalWeightsError(
                    f"{label}: a test forward pass on a (2, 3, {size}, {size}) batch failed: {err}. Set input_size "
                    "to the size the model expects; a torch.export program needs a dynamic batch dimension "
                    "(docs/external_encoders.md).") from err
            finally:
                self.train(was_training)
        return int(feats.shape[1])

    def train(self, mode: bool = True) -> "ExternalEncoder":
        """Set train / eval mode on the wrapped model (exported programs keep the mode they were exported in)."""
        self.training = mode
        if self.format != "pt2":  # exported programs have a fixed mode
            self.model.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to the model's input size if fixed, normalize with its mean / std, select its feature output."""
        if self.input_size and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return select_output(self.model(x), self.output)


def _exported_size(program: Any) -> int | None:
    """The square spatial size a torch.export program's image input was fixed to (None if dynamic)."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            shape = getattr(node.meta.get("val"), "shape", ())
            if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
                return int(shape[2])
            return None
    return None


def _load_model(path: Path, fmt: str, encoder: Any, layout: str, strip_prefix: list[str],
                ignore_keys: Sequence[str] | None, label: str) -> tuple[nn.Module, int | None]:
    """The file's model and, for a torch.export program, the input size it was exported with."""
    if fmt == "pt2":
        program = torch.export.load(str(path))
        return program.module(), _exported_size(program)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch.jit is deprecated upstream; the user chose the format
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")
            return torch.jit.load(str(path), map_location="cpu"), None
    if not encoder:
        raise ValueError(f"{label}: a state_dict needs 'encoder' (the stainshift architecture its weights fit)")
    spec = {"arch": encoder} if isinstance(encoder, str) else dict(encoder)
    spec.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # the wrapper normalises
    model = build_encoder(spec)
    state, dropped = map_keys(read_state_dict(path), layout, strip_prefix, ignore_keys)
    load_mapped(model, state, label)
    if dropped:
        log.info("%s: dropped %d keys not part of the encoder: %s", label, len(dropped), _listing(dropped, 6))
    return model, None


@register_encoder("external")
def external(**spec: Any) -> ExternalEncoder:
    """The encoder of a config ``external:`` entry (kwargs of :class:`ExternalEncoder`)."""
    return ExternalEncoder(**spec)


# ---------------------------------------------------------------------------------------------
# config entries and the workflow's import step
# ---------------------------------------------------------------------------------------------
ENTRY_KEYS = ("file", "format", "encoder", "layout", "strip_prefix", "ignore_keys", "input_size", "mean", "std", "output")


def check_entries(entries: Sequence[Mapping[str, Any]], reserved: Iterable[str] = (),
                  base_dir: str | os.PathLike = ".") -> dict[str, dict[str, Any]]:
    """Parse-time checks of the config's ``external:`` list → {name: entry}: unique names that
    are not a trained method's, an existing file, a known format, ``encoder`` for a state dict and a
    layout that fits it. The error names the entry (``external[i]``) and what is wrong."""
    reserved = set(reserved)
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for i, entry in enumerate(entries):
        where = f"external[{i}] ({entry.get('name', '?')!r})"
        name = str(entry.get("name", ""))
        if name in reserved:
            problems.append(f"{where}: name {name!r} is a built-in method; give the external encoder its own name")
        if name in out:
            problems.append(f"{where}: name {name!r} is used twice")
        path = Path(entry.get("file", ""))
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.is_file():
            problems.append(f"{where}: file {entry.get('file')!r} does not exist")
            continue
        fmt = resolve_format(path, entry.get("format", "auto"))
        arch = entry.get("encoder")
        arch_name = arch if isinstance(arch, str) or arch is None else arch.get("arch")
        layout = entry.get("layout", "stainshift")
        if fmt == "state_dict" and not arch_name:
            problems.append(f"{where}: a state_dict file needs 'encoder' (a stainshift arch, e.g. resnet18)")
        if fmt != "state_dict" and arch_name:
            problems.append(f"{where}: 'encoder' applies to state_dict files only (this file is {fmt})")
        if fmt == "state_dict" and layout == "torchvision" and not str(arch_name).startswith("resnet"):
            problems.append(f"{where}: layout torchvision fits resnet18/34/50, not {arch_name!r}")
        if fmt == "state_dict" and layout == "timm" and not str(arch_name).startswith("vit"):
            problems.append(f"{where}: layout timm fits vit_* archs, not {arch_name!r}")
        out[name] = {**{k: v for k, v in entry.items() if k in ENTRY_KEYS}, "name": name, "format": fmt,
                     "file": str(path), "finetune": entry.get("finetune", "probe")}
    if problems:
        from stainshift.validation import ConfigError

        raise ConfigError("invalid config 'external':\n" + "\n".join(f"  - {p}" for p in problems))
    return out


def import_encoder(entry: Mapping[str, Any], out_dir: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """The workflow's ``import_encoder`` step of one run: load and check the file (checksum, keys,
    a test forward pass), write ``encoder.pt`` (spec with the sha256, no weights) and a
    ``train_summary.json`` that records the file, its sha256 and that nothing was trained."""
    from stainshift.train import save_encoder, write_json

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    sha = file_sha256(entry["file"])
    spec = {"arch": "external", **{k: entry[k] for k in ENTRY_KEYS if k in entry}, "sha256": sha,
            "name": entry["name"]}
    encoder = build_encoder(spec)
    provenance = {"name": entry["name"], "file": str(entry["file"]), "sha256": sha, "format": encoder.format,
                  "output": encoder.output, "input_size": encoder.input_size, "out_dim": encoder.out_dim,
                  "finetune": entry.get("finetune", "probe")}
    log.info("external encoder %s: %s (%s, sha256 %s), %d features", entry["name"], entry["file"], encoder.format,
             sha, encoder.out_dim)
    save_encoder(encoder, out_dir / "encoder.pt", method=str(meta.get("method", entry["name"])), epochs=0,
                 meta=dict(meta), external=provenance, learning={"status": "external", "reasons": []})
    write_json(out_dir / "train_summary.json", {
        "method": entry["name"], **meta, "epochs": 0, "tiles": 0, "images_seen": 0,
        "learning": {"status": "external", "reasons": []}, "external": provenance,
        "seconds": round(time.perf_counter() - t0, 1)})
    return out_dir / "encoder.pt"


__all__ = ["ExternalEncoder", "ExternalWeightsError", "check_entries", "file_sha256", "import_encoder",
           "load_init", "load_mapped", "map_keys", "read_state_dict", "resolve_format", "select_output"]
