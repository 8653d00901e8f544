"""Config and sample-sheet validation: every error names the key / row / column."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from stainshift.validation import ConfigError, load_sample_sheet, validate_config
from workflow_helpers import REPO, make_workdir, run_snakemake

SCHEMAS = REPO / "workflow" / "schemas"


def _default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _write_sheet(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "slides.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def _row(slide_id: str, path: str, **kw) -> dict:
    return {"slide_id": slide_id, "path": path, "center": "c1", "patient": "p1", "split": "train", **kw}


def test_default_config_is_valid() -> None:
    validate_config(_default_config(), SCHEMAS / "config.schema.yaml")


def test_bad_config_key_is_named() -> None:
    cfg = _default_config()
    cfg["tiling"]["filter"] = "magic"
    cfg["tiling"]["patch_sise"] = 64  # typo
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg, SCHEMAS / "config.schema.yaml")
    msg = str(exc.value)
    assert "tiling.filter" in msg and "magic" in msg
    assert "patch_sise" in msg


def test_unknown_top_level_key_is_named() -> None:
    cfg = _default_config()
    cfg["tilling"] = {}
    with pytest.raises(ConfigError, match="tilling"):
        validate_config(cfg, SCHEMAS / "config.schema.yaml")


def test_valid_sheet_loads(tmp_path: Path) -> None:
    (tmp_path / "s1.tiff").write_bytes(b"x")
    sheet = _write_sheet(tmp_path, [_row("s1", "s1.tiff", mpp=0.25)])
    df = load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)
    assert list(df.index) == ["s1"]
    assert df.loc["s1", "mpp"] == 0.25
    assert df.loc["s1", "annotation"] is None


def test_missing_file_names_row_and_column(tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path, [_row("s1", "nope.svs")])
    with pytest.raises(ConfigError) as exc:
        load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)
    msg = str(exc.value)
    assert "row 2" in msg and "'path'" in msg and "nope.svs" in msg


def test_generated_paths_are_allowed(tmp_path: Path) -> None:
    sheet = _write_sheet(tmp_path, [_row("s1", "results/synth/s1.tiff")])
    df = load_sample_sheet(
        sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path, generated_prefixes=["results/synth"]
    )
    assert len(df) == 1


def test_duplicate_slide_id(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    sheet = _write_sheet(tmp_path, [_row("s1", "a.tiff"), _row("s1", "a.tiff")])
    with pytest.raises(ConfigError, match=r"row 3, column 'slide_id': duplicate slide_id 's1' \(first at row 2\)"):
        load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)


def test_patient_in_two_splits_names_patient_and_rows(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    sheet = _write_sheet(tmp_path, [_row("s1", "a.tiff"), _row("s2", "a.tiff", patient="p2", split="val"),
                                    _row("s3", "a.tiff", split="test")])
    with pytest.raises(ConfigError) as exc:
        load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)
    msg = str(exc.value)
    assert "patient 'p1'" in msg and "row 2 (train)" in msg and "row 4 (test)" in msg and "p2" not in msg


def test_unknown_split(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    sheet = _write_sheet(tmp_path, [_row("s1", "a.tiff", split="training")])
    with pytest.raises(ConfigError) as exc:
        load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)
    msg = str(exc.value)
    assert "row 2" in msg and "'split'" in msg and "training" in msg


def test_bad_mpp_and_unknown_column(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    sheet = _write_sheet(tmp_path, [_row("s1", "a.tiff", mpp="fast")])
    with pytest.raises(ConfigError, match=r"row 2, column 'mpp': 'fast' is not a number"):
        load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)
    sheet = _write_sheet(tmp_path, [_row("s1", "a.tiff", stain="he")])
    with pytest.raises(ConfigError, match=r"unknown column\(s\) \['stain'\]"):
        load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)


def test_missing_required_column_value(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    sheet = _write_sheet(tmp_path, [_row("s1", "a.tiff", center="")])
    with pytest.raises(ConfigError, match=r"row 2 \(slide_id='s1'\), column 'center'"):
        load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)


# Bad config / sheet through `snakemake --dry-run`: tests/test_bad_inputs.py.


def test_fusion_method_not_pretrained_is_skipped_with_a_note(tmp_path: Path) -> None:
    # an overlay narrowing pretrain.methods keeps the base fusion list (lists replace, dicts merge)
    work = make_workdir(tmp_path, {"pretrain": {"methods": ["baseline"]}, "finetune": {"fusion": ["sassl"]}})
    proc = run_snakemake(work, "--dry-run", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finetune.fusion ['sassl'] not in pretrain.methods ['baseline']" in proc.stderr


def test_parsing_the_workflow_imports_neither_torch_nor_numba(tmp_path: Path) -> None:
    """Every Snakemake start parses the Snakefile (on a cluster: every job). Its checks read the
    torch-free method settings, normalize plan and crop-store plan; importing torch, numba, zarr and
    the model code there cost 3.8 s and 250 MB per start (a dry run of the demo: 6.5 -> 2.7 s here)."""
    work = make_workdir(tmp_path)
    proc = run_snakemake(work, "--dry-run", env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"stainshift.train.config", "stainshift.stain.targets", "stainshift.validation"} <= imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "numba", "kornia", "monai", "zarr"))
    assert not heavy, f"the parse imported {heavy[:5]} ..."


def test_every_builtin_method_is_registered_with_its_settings() -> None:
    from stainshift.methods import Method, available_methods, get_method_class, register_method
    from stainshift.train.config import METHOD_SETTINGS, builtin_methods, settings_of

    assert set(builtin_methods()) <= set(available_methods())
    for name in builtin_methods():
        cls = get_method_class(name)
        assert cls.settings is METHOD_SETTINGS[name] and cls.supervised == settings_of(name).supervised
    # the workflow's native downstream (end-to-end classifier) follows these flags
    assert [m for m in builtin_methods() if settings_of(m).supervised] == ["baseline", "stain_embed", "stain_embed_c"]
    with pytest.raises(ValueError, match="method 'simclr' is built in: its class must set settings"):
        register_method("simclr")(type("NotSimCLR", (Method,), {}))
    with pytest.raises(KeyError, match="unknown method 'simclrr'; built-in: baseline, lmc"):
        settings_of("simclrr")


def test_method_settings_are_checked_by_name_and_type() -> None:
    from stainshift.train import check_pretrain_config

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["pretrain"]
    check_pretrain_config(cfg)  # the shipped config and its examples pass
    for example in ("tiny.yaml", "mitosis.yaml"):
        check_pretrain_config(yaml.safe_load((REPO / "config" / "examples" / example).read_text())["pretrain"])
    cfg["simclr"]["temprature"] = 0.2       # a typo: would train with the default temperature
    cfg["defaults"]["batch_size"] = "64"    # a string where an integer belongs
    cfg["sassl"]["adv_weight"] = "high"
    cfg["lmc"]["proj_dim"] = 64             # lmc's own setting: accepted
    with pytest.raises(ConfigError) as err:
        check_pretrain_config(cfg)
    text = str(err.value)
    assert "key 'pretrain.simclr.temprature': not a setting of method 'simclr' (did you mean 'temperature'?)" in text
    assert "key 'pretrain.defaults.batch_size': '64' should be an integer" in text
    assert "key 'pretrain.sassl.adv_weight': 'high' should be a number" in text
    assert "lmc" not in text


def test_one_class_slide_labels_are_refused(tmp_path: Path) -> None:
    from stainshift.validation import check_slide_label_classes

    for name in ("a.tiff", "b.tiff", "c.tiff"):
        (tmp_path / name).write_bytes(b"x")
    rows = [_row("s1", "a.tiff", label="tumour", patient="p1"), _row("s2", "b.tiff", label="tumour", patient="p2"),
            _row("s3", "c.tiff", label="normal", patient="p3", split="test")]
    sheet = _write_sheet(tmp_path, rows)
    samples = load_sample_sheet(sheet, SCHEMAS / "samples.schema.yaml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"every 'train' slide has label 'tumour'"):
        check_slide_label_classes(samples, sheet)
    rows[1]["label"] = "normal"
    check_slide_label_classes(load_sample_sheet(_write_sheet(tmp_path, rows), SCHEMAS / "samples.schema.yaml",
                                                base_dir=tmp_path), sheet)


def test_a_misspelt_resource_stage_is_named() -> None:
    cfg = _default_config()
    cfg["resources"]["pretrian"] = {"gpus": 2}  # silently ignored before: no stage reads it
    with pytest.raises(ConfigError, match=r"key 'resources': 'pretrian' is not one of \['default', 'gpu'"):
        validate_config(cfg, SCHEMAS / "config.schema.yaml")
