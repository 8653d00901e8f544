# Shared parse-time state: validated config, the sample sheet, the store table, helpers for rules.
import os
from pathlib import Path

import pandas as pd

from stainshift.validation import load_sample_sheet, validate_config

SCHEMAS = Path(workflow.basedir) / "schemas"

# Clear messages first (every bad key at once, by path), then Snakemake's own validation
# (which also fills schema defaults).
validate_config(config, SCHEMAS / "config.schema.yaml")
validate(config, SCHEMAS / "config.schema.yaml")

RESULTS = config["results"].rstrip("/")
SYNTH_DIR = f"{RESULTS}/synth"
ENV_CPU = "../envs/cpu.yaml"
ENV_GPU = "../envs/gpu.yaml"

SAMPLES = load_sample_sheet(
    config["samples"],
    SCHEMAS / "samples.schema.yaml",
    base_dir=".",
    generated_prefixes=[SYNTH_DIR] if config["synth"]["enabled"] else [],
)
SLIDES = list(SAMPLES["slide_id"])
CENTERS = sorted(SAMPLES["center"].unique())

# Each rules file registers a function returning the final targets it contributes to `rule all`.
TARGET_FUNCS = []


def all_targets(wildcards=None):
    return [t for f in TARGET_FUNCS for t in f()]


def slides_where(split=None, center=None):
    """Slide ids of the sample sheet, optionally filtered by split and/or center."""
    df = SAMPLES
    if split is not None:
        df = df[df["split"] == split]
    if center is not None:
        df = df[df["center"] == center]
    return list(df["slide_id"])


def res(stage, key):
    """A resource of a stage from config['resources'] (falls back to the 'default' entry)."""
    stage_res = config["resources"].get(stage, {})
    if key in stage_res:
        return stage_res[key]
    return config["resources"]["default"].get(key, 0)


def log_path(stage, name="{slide}"):
    return f"{RESULTS}/logs/{stage}/{name}.log"


def bench_path(stage, name="{slide}"):
    return f"{RESULTS}/benchmarks/{stage}/{name}.tsv"
