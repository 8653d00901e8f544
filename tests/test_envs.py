"""The conda environments of the rules (workflow/envs/*.yaml) install exactly what pip installs.

`snakemake --sdm conda` builds these on clusters; `make test` / `make demo` use pip with
pyproject.toml + requirements.lock. The two must not drift: same packages, same exact pins, same
Python, and stainshift itself installed into the env (its entry points register the zarr codecs).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = {name: REPO / "workflow" / "envs" / f"{name}.yaml" for name in ("cpu", "gpu")}
SELF_INSTALL = "-e ${STAINSHIFT_ROOT}"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    """{canonical name: version} of `name==version` requirement lines; anything else is an error."""
    pins = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert m, f"not an exact pin: {line!r}"
        pins[_canon(m.group(1))] = m.group(2)
    return pins


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _env(name: str) -> tuple[list, list[str]]:
    """(conda dependencies other than the pip block, pip lines) of an env file."""
    spec = yaml.safe_load(ENVS[name].read_text())
    conda_deps, pip_lines = [], []
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            pip_lines.extend(dep["pip"])
        else:
            conda_deps.append(dep)
    return conda_deps, pip_lines


@pytest.mark.parametrize("name", sorted(ENVS))
def test_env_pins_equal_pyproject(name):
    conda_deps, pip_lines = _env(name)
    expected = _pins(_pyproject()["project"]["dependencies"])
    got = _pins([line for line in pip_lines if line != SELF_INSTALL])
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = {k: (got[k], expected[k]) for k in set(got) & set(expected) if got[k] != expected[k]}
    assert not missing and not extra and not differ, (
        f"{ENVS[name].name} drifted from pyproject.toml: missing {missing}, extra {extra}, "
        f"different versions (env, pyproject) {differ}"
    )
    # conda itself only provides python + pip; everything else comes from the pip block above
    assert sorted(str(d).split("=")[0] for d in conda_deps) == ["pip", "python"], conda_deps


@pytest.mark.parametrize("name", sorted(ENVS))
def test_env_python_matches_project(name):
    conda_deps, _ = _env(name)
    python = next(str(d) for d in conda_deps if str(d).startswith("python"))
    version = python.split("=", 1)[1]
    requires = _pyproject()["project"]["requires-python"]  # e.g. ">=3.11,<3.13"
    low = re.search(r">=\s*(\d+)\.(\d+)", requires)
    high = re.search(r"<\s*(\d+)\.(\d+)", requires)
    v = tuple(int(x) for x in version.split(".")[:2])
    assert low and v >= (int(low.group(1)), int(low.group(2))), (version, requires)
    assert high and v < (int(high.group(1)), int(high.group(2))), (version, requires)
    # and it is the Python the pip lock was resolved on (requirements.lock header: Python 3.11)
    assert f"Python {version}" in (REPO / "requirements.lock").read_text().splitlines()[0]


@pytest.mark.parametrize("name", sorted(ENVS))
def test_env_pins_equal_lock_and_installed_venv(name):
    """Each pin is the lock file's version and the one installed in the venv running the tests."""
    _, pip_lines = _env(name)
    lock = _pins([line for line in (REPO / "requirements.lock").read_text().splitlines()
                  if line and not line.startswith("#")])
    for req, version in _pins([line for line in pip_lines if line != SELF_INSTALL]).items():
        assert lock.get(req) == version, f"{req}: env {version}, requirements.lock {lock.get(req)}"
        installed = metadata.version(req)
        assert installed.split("+")[0] == version, f"{req}: env pins {version}, venv has {installed}"


@pytest.mark.parametrize("name", sorted(ENVS))
def test_env_installs_stainshift_from_the_checkout(name):
    _, pip_lines = _env(name)
    assert pip_lines[-1] == SELF_INSTALL, f"{ENVS[name].name} must end with `- {SELF_INSTALL}`"
    # the Snakefile exports the variable the pip line refers to
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'os.environ.setdefault("STAINSHIFT_ROOT"' in common


def test_pip_expands_stainshift_root_like_conda_does(tmp_path):
    """conda hands the pip block to `pip install -r <file>`; pip expands ${STAINSHIFT_ROOT} in it."""
    req = tmp_path / "condaenv.requirements.txt"
    req.write_text(SELF_INSTALL + "\n")
    env = {**os.environ, "STAINSHIFT_ROOT": str(REPO), "PIP_NO_INDEX": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
         "-r", str(req)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Would install stainshift-" in proc.stdout, proc.stdout


def test_every_rule_uses_one_of_the_envs():
    """Each rule file's conda: directives name ENV_CPU / ENV_GPU, which point at these files."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'ENV_CPU = "../envs/cpu.yaml"' in common and 'ENV_GPU = "../envs/gpu.yaml"' in common
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        # rules that run a job (script / shell / run); target rules such as stages.smk's have none
        n_rules = len(re.findall(r"^\s+(?:script|shell|run):", text, flags=re.M))
        envs = re.findall(r"^\s+conda:\s*\n\s+(\S+)", text, flags=re.M)
        assert len(envs) == n_rules, f"{smk.name}: {n_rules} rules with a job but {len(envs)} conda: directives"
        assert set(envs) <= {"ENV_CPU", "ENV_GPU"}, f"{smk.name}: conda: {set(envs)}"
