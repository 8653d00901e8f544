"""config/README.md documents every config key and sample-sheet column; .snakemake-workflow-catalog.yml
has the keys the Snakemake workflow catalog reads (issue 12).

Matching rule for the README: the README is cut into sections at its ``### `` headings. A key of the
config schema, at any depth, must appear as inline code in the section of its top-level key (the
heading that names that key in backticks, e.g. ``### `tiling` ``; ``results`` and ``samples`` live
in ``### Top level``): either the code span is the key itself (`` `patch_size` ``) or the key is a
YAML key inside the span (`` `{arch: …}` ``). Sample-sheet columns must appear the same way in the
``### Sample sheet`` section.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "config" / "README.md"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SAMPLES_SCHEMA = REPO / "workflow" / "schemas" / "samples.schema.yaml"
CATALOG = REPO / ".snakemake-workflow-catalog.yml"


def _sections(text: str) -> dict[str, str]:
    """``### `` heading line → the text up to the next ``##``/``###`` heading."""
    out: dict[str, str] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("## ") or line.startswith("### "):
            heading = line if line.startswith("### ") else None
            if heading:
                out[heading] = ""
        elif heading:
            out[heading] += line + "\n"
    return out


def _section(sections: dict[str, str], name: str) -> str:
    hits = [body for head, body in sections.items() if name in head]
    assert len(hits) == 1, f"config/README.md needs exactly one '### ' heading containing {name!r}, found {len(hits)}"
    return hits[0]


def _in_code(key: str, body: str) -> bool:
    for span in re.findall(r"`([^`\n]+)`", body):
        if span.strip() == key or re.search(rf"(^|[{{\s,]){re.escape(key)}:", span):
            return True
    return False


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _keys(node: Any, root: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Every property path below ``node`` (through properties, items, patternProperties,
    additionalProperties and local $refs)."""
    if not isinstance(node, dict):
        return
    node = _resolve(node, root)
    for name, sub in (node.get("properties") or {}).items():
        yield path + (name,)
        yield from _keys(sub, root, path + (name,))
    for pattern, sub in (node.get("patternProperties") or {}).items():
        m = re.fullmatch(r"\^\((.*)\)\$", pattern)
        names = m.group(1).split("|") if m else [pattern]
        for name in names:
            yield path + (name,)
        yield from _keys(sub, root, path + (names[0],))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _keys(node[key], root, path)


SCHEMA_DATA = yaml.safe_load(SCHEMA.read_text())
KEY_PATHS = sorted(set(_keys(SCHEMA_DATA, SCHEMA_DATA, ())))


def test_the_schema_walk_finds_the_nested_keys() -> None:
    """Guard for the walker itself: second-level keys, crop-set item keys and $ref'd resource keys."""
    assert ("tiling", "patch_size") in KEY_PATHS
    assert ("normalize", "targets") in KEY_PATHS
    assert ("crops", "role") in KEY_PATHS and ("crops", "splits", "test") in KEY_PATHS
    assert ("resources", "mem_mb") in KEY_PATHS and ("pretrain", "sassl", "d_steps") in KEY_PATHS
    assert ("pretrain", "stain_embed_c") in KEY_PATHS


def test_every_config_key_is_documented_in_its_section() -> None:
    sections = _sections(README.read_text(encoding="utf-8"))
    top = _section(sections, "Top level")
    missing = []
    for path in KEY_PATHS:
        if len(path) == 1:
            if not _in_code(path[0], top):
                missing.append(path[0])
            continue
        if not _in_code(path[-1], _section(sections, f"`{path[0]}`")):
            missing.append(".".join(path))
    assert not missing, f"config/README.md does not document: {missing}"


def test_every_sample_sheet_column_is_documented() -> None:
    body = _section(_sections(README.read_text(encoding="utf-8")), "Sample sheet")
    columns = list(yaml.safe_load(SAMPLES_SCHEMA.read_text())["properties"])
    missing = [c for c in columns if not _in_code(c, body)]
    assert not missing, f"config/README.md, Sample sheet: missing columns {missing}"
    assert "`{results}`" in body


def _overlays() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return [yaml.safe_load(b) for b in blocks]


def test_the_worked_test_only_overlays_validate_and_repeat_the_mitosis_crop_sets() -> None:
    """The README's two overlays, merged the way Snakemake merges config files, pass the schema;
    the mitosis one repeats mitosis.yaml's crop sets exactly (a list in an overlay replaces)."""
    from snakemake.utils import update_config

    from stainshift.validation import validate_config

    demo, mitosis_overlay = _overlays()
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    mitosis = yaml.safe_load((REPO / "config" / "examples" / "mitosis.yaml").read_text())

    for layers in ([demo], [mitosis, mitosis_overlay]):
        cfg = copy.deepcopy(base)
        for layer in layers:
            update_config(cfg, copy.deepcopy(layer))
        validate_config(cfg, SCHEMA)
        assert cfg["crops"][-1]["role"] == "test_only"
    assert mitosis_overlay["crops"][:-1] == mitosis["crops"]


def test_workflow_catalog_settings() -> None:
    """The keys the catalog's generator reads: usage.mandatory-flags {desc, flags},
    usage.software-stack-deployment (at least one method true), usage.report; plus the files the
    'standardized usage' listing requires."""
    settings = yaml.safe_load(CATALOG.read_text())
    usage = settings["usage"]
    flags = usage["mandatory-flags"]
    assert isinstance(flags["desc"], str) and flags["desc"].strip()
    assert "--cores" in (flags["flags"] if isinstance(flags["flags"], str) else " ".join(flags["flags"]))
    deploy = usage["software-stack-deployment"]
    assert set(deploy) <= {"conda", "apptainer", "apptainer+conda", "singularity", "singularity+conda"}
    assert all(isinstance(v, bool) for v in deploy.values()) and deploy["conda"] is True
    assert usage["report"] is True
    assert (REPO / "workflow" / "Snakefile").is_file() and README.is_file()
    assert list((REPO / "workflow" / "envs").glob("*.yaml"))


@pytest.mark.parametrize("heading", ["## Running with an overlay", "## How overlays merge",
                                     "## Worked example: a test-only domain", "## Every key"])
def test_readme_parts(heading: str) -> None:
    assert heading in README.read_text(encoding="utf-8")
