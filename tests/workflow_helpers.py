"""Run the Snakemake workflow in a throw-away working directory (tests only).

Every workflow test copies `config/` into its own tmp dir and runs Snakemake there with
`--directory`, so tests never share a `.snakemake/` lock or `results/` with each other or the repo.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TINY = REPO / "config" / "examples" / "tiny.yaml"


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def make_workdir(tmp: Path, overrides: dict[str, Any] | None = None, tiny: bool = True) -> Path:
    """Copy the repo's config/ into ``tmp`` and write the merged config to tmp/config/config.yaml."""
    work = Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config", work / "config", dirs_exist_ok=True)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if tiny:
        deep_update(cfg, yaml.safe_load(TINY.read_text()) or {})
    if overrides:
        deep_update(cfg, overrides)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


def run_snakemake(
    workdir: Path, *args: str, cores: int = 2, check: bool = True, env: dict | None = None, timeout: float = 1500
) -> subprocess.CompletedProcess:
    """Run `snakemake` on the repo's workflow inside ``workdir``; return the completed process."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--cores", str(cores),
        "--profile", str(REPO / "workflow" / "profiles" / "default"),
        *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + full_env.get("PATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc
