"""Config and sample-sheet validation with messages that name the key, row and column.

The Snakefile calls these at parse time so a bad config or sheet fails before any job runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import pandas as pd
import yaml

SAMPLE_COLUMNS = ["slide_id", "path", "center", "patient", "split", "label", "annotation", "mpp"]
OPTIONAL_COLUMNS = ["label", "annotation", "mpp"]


class ConfigError(ValueError):
    """A configuration or sample-sheet problem, with a message naming where it is."""


def _load_schema(schema: str | Path | dict) -> dict:
    if isinstance(schema, dict):
        return schema
    with open(schema) as fh:
        return yaml.safe_load(fh)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(config: dict, schema: str | Path | dict, source: str = "config") -> None:
    """Validate ``config`` against a JSON schema; raise ConfigError listing every bad key."""
    validator = jsonschema.Draft202012Validator(_load_schema(schema))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  - key '{_key_path(e)}': {e.message}" for e in errors]
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines))


def read_config_file(path: str | Path) -> dict:
    """One YAML config file as a mapping; a syntax error names the file, line and column (Snakemake's
    own message names neither)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {exc.problem or exc}"
                          + (f" ({exc.context})" if exc.context else "")) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def merge_overlay(base: dict, overlay: dict) -> dict:
    """``overlay`` on ``base`` as Snakemake merges --configfile overlays: mappings key by key, every
    other value (lists included) replaced whole."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge_overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_config_files(paths: Iterable[str | Path], schema: str | Path | dict) -> dict:
    """Read, merge (in order) and validate config files as the workflow will see them: the merged
    config, or ConfigError naming the file / line or every bad key."""
    merged: dict = {}
    for path in paths:
        merged = merge_overlay(merged, read_config_file(path))
    validate_config(merged, schema, source="config (" + " + ".join(str(p) for p in paths) + ")")
    return merged


def _clean(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and pd.isna(value):
        return None
    if isinstance(value, str) and value.strip() == "":
        return None
    return value


def read_sample_sheet(path: str | Path) -> pd.DataFrame:
    """Read a TSV sample sheet as strings (mpp as float), empty cells as None."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sample sheet '{path}' does not exist")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    unknown = [c for c in df.columns if c not in SAMPLE_COLUMNS]
    if unknown:
        raise ConfigError(
            f"sample sheet '{path}': unknown column(s) {unknown}; allowed columns are {SAMPLE_COLUMNS}"
        )
    missing = [c for c in SAMPLE_COLUMNS if c not in OPTIONAL_COLUMNS and c not in df.columns]
    if missing:
        raise ConfigError(f"sample sheet '{path}': missing required column(s) {missing}; the header has "
                          f"{list(df.columns)} (columns are tab-separated)")
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = None
    return df[SAMPLE_COLUMNS]


def validate_sample_sheet(
    df: pd.DataFrame,
    schema: str | Path | dict,
    sheet: str | Path = "sample sheet",
    base_dir: str | Path = ".",
    generated_prefixes: Iterable[str] = (),
) -> pd.DataFrame:
    """Validate every row of a sample sheet; return it indexed by slide_id.

    Checks: schema per row (errors name row number and column), unique slide_id, and that each
    ``path``/``annotation`` exists (relative to ``base_dir``) unless it lies under one of
    ``generated_prefixes`` (files another rule produces, e.g. the synthetic demo slides).
    """
    schema = _load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    base_dir = Path(base_dir)
    prefixes = tuple(str(Path(p)) + "/" for p in generated_prefixes)
    problems: list[str] = []
    records = []
    for i, raw in enumerate(df.to_dict("records")):
        row_no = i + 2  # 1-based, after the header line
        rec = {k: _clean(v) for k, v in raw.items()}
        if rec.get("mpp") is not None:
            try:
                rec["mpp"] = float(rec["mpp"])
            except ValueError:
                problems.append(f"  - row {row_no}, column 'mpp': '{rec['mpp']}' is not a number")
                rec["mpp"] = None
        for err in validator.iter_errors({k: v for k, v in rec.items() if v is not None or k in OPTIONAL_COLUMNS}):
            col = _key_path(err)
            if err.validator == "required":
                col = err.message.split("'")[1] if "'" in err.message else col
            problems.append(f"  - row {row_no} (slide_id={rec.get('slide_id')!r}), column '{col}': {err.message}")
        for col in ("path", "annotation"):
            value = rec.get(col)
            if not value:
                continue
            p = Path(value)
            full = p if p.is_absolute() else base_dir / p
            generated = any(str(p).startswith(pref) for pref in prefixes)
            if not generated and not full.exists():
                problems.append(
                    f"  - row {row_no} (slide_id={rec.get('slide_id')!r}), column '{col}': file '{value}' does not exist"
                )
        records.append(rec)
    problems += _patients_in_several_splits(records)
    ids = [r.get("slide_id") for r in records]
    seen: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in seen:
            problems.append(
                f"  - row {i + 2}, column 'slide_id': duplicate slide_id {sid!r} (first at row {seen[sid] + 2})"
            )
        else:
            seen[sid] = i
    if problems:
        raise ConfigError(f"invalid sample sheet '{sheet}':\n" + "\n".join(problems))
    out = pd.DataFrame.from_records(records, columns=SAMPLE_COLUMNS)
    return out.set_index("slide_id", drop=False)


def _patients_in_several_splits(records: list[dict[str, Any]]) -> list[str]:
    """One problem line per patient whose slides sit in more than one split (train/val/test must be
    split by patient, or the test set shares patients with training; DESIGN.md)."""
    rows_by_patient: dict[str, list[tuple[int, str]]] = {}
    for i, rec in enumerate(records):
        if rec.get("patient") and rec.get("split"):
            rows_by_patient.setdefault(str(rec["patient"]), []).append((i + 2, str(rec["split"])))
    out = []
    for patient, rows in rows_by_patient.items():
        splits = sorted({s for _, s in rows})
        if len(splits) > 1:
            where = ", ".join(f"row {r} ({s})" for r, s in rows)
            out.append(f"  - column 'patient': patient {patient!r} is in several splits {splits}: {where}; "
                       "split by patient so no test patient is seen in training")
    return out


def check_slide_label_classes(samples: pd.DataFrame, sheet: str | Path, train_split: str = "train") -> None:
    """A sheet whose training slides are labelled only by the ``label`` column (no annotations) and
    carry a single class is refused at parse time: every probe and metric would be degenerate (AUC
    undefined, balanced accuracy = accuracy of a constant) — the error names the sheet and the value."""
    train = samples[samples["split"] == train_split]
    if train.empty or "label" not in train:
        return
    annotated = train["annotation"].notna() & (train["annotation"].astype(str) != "") if "annotation" in train else False
    labels = train.loc[~annotated, "label"].dropna().astype(str)
    labels = labels[labels != ""]
    if len(labels) == len(train) and labels.nunique() < 2:
        raise ConfigError(f"sample sheet '{sheet}': every '{train_split}' slide has label {labels.iloc[0]!r} (column "
                          "'label', no annotations); a classifier needs at least two classes to learn from")


def check_slide_pixel_sizes(
    samples: pd.DataFrame,
    sheet: str | Path,
    base_dir: str | Path = ".",
    generated_prefixes: Iterable[str] = (),
    cache_file: str | Path | None = None,
) -> None:
    """Every slide needs a level-0 pixel size: the sheet's ``mpp`` cell or its file's header.

    For rows without an ``mpp`` cell the slide's header is read here, at parse time (no pixels;
    ~6 ms per SVS, remembered in ``cache_file`` by path, size and modification time), so a slide
    without a pixel size — or one that cannot be opened — is named by row before any job runs.
    Slides another rule generates (``generated_prefixes``) are skipped: they do not exist yet.
    """
    from stainshift.atomic import write_json
    from stainshift.io import SlideReadError, native_pixel_size

    base_dir = Path(base_dir)
    prefixes = tuple(str(Path(p)) + "/" for p in generated_prefixes)
    cache: dict[str, list] = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            cache = {}
    changed = False
    problems: list[str] = []
    for i, rec in enumerate(samples.to_dict("records")):
        path = rec.get("path")
        if rec.get("mpp") is not None or not path or str(path).startswith(prefixes):
            continue
        full = Path(path) if Path(path).is_absolute() else base_dir / path
        where = f"  - row {i + 2} (slide_id={rec.get('slide_id')!r}), column 'mpp'"
        try:
            st = full.stat()
            key = str(full.resolve())
            hit = cache.get(key)
            if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
                mpp = hit[2]
            else:
                mpp = native_pixel_size(full)
                cache[key] = [st.st_size, st.st_mtime_ns, mpp]
                changed = True
        except (OSError, SlideReadError) as exc:
            problems.append(f"{where}: empty, and the slide's header cannot be read: {exc}")
            continue
        if mpp is None:
            problems.append(f"{where}: empty, and '{path}' records no pixel size (µm/px) in its header; "
                            "give the level-0 µm/px in the sheet's 'mpp' column")
    if changed and cache_file is not None:
        try:
            write_json(cache_file, cache)
        except OSError:
            pass  # a cache only: a read-only working dir reads the headers again next time
    if problems:
        raise ConfigError(f"sample sheet '{sheet}': slides without a pixel size:\n" + "\n".join(problems))


def load_sample_sheet(
    path: str | Path,
    schema: str | Path | dict,
    base_dir: str | Path = ".",
    generated_prefixes: Iterable[str] = (),
    results: str | None = None,
) -> pd.DataFrame:
    """Read and validate a sample sheet (see :func:`validate_sample_sheet`). ``{results}`` in a
    ``path`` / ``annotation`` cell stands for the config's results folder (``results``), so a sheet of
    generated slides (the demo's) follows a changed ``results:``."""
    df = read_sample_sheet(path)
    if results is not None:
        for col in ("path", "annotation"):
            df[col] = [v.replace("{results}", results) if isinstance(v, str) else v for v in df[col]]
    return validate_sample_sheet(df, schema, sheet=path, base_dir=base_dir, generated_prefixes=generated_prefixes)
