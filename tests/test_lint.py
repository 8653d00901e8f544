"""The workflow is lint-clean, plans the demo, and every rule carries log/benchmark/conda/resources.

Cheap checks (seconds, no job runs): `snakemake --lint`, `--dry-run`, the rule objects Snakemake
parsed, and the jobs a dry run would submit — the same resources the slurm executor turns into
sbatch flags (docs/cluster.md).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_helpers import REPO, SNAKEFILE, make_workdir, run_snakemake

PROFILES = REPO / "workflow" / "profiles"
GPU_STAGES = ("pretrain", "finetune", "embed")
# The resource entry (config resources.<stage>) each rule runs on.
RESOURCE_STAGE = {"tile_slide": "tile", "import_crops": "tile", "normalize_store": "normalize", "pretrain_run": "pretrain",
                  "import_encoder": "embed", "embed_run": "embed", "finetune_run": "finetune", "predict_store": "embed",
                  "evaluate_method": "evaluate"}


def _rules_of_workflow(workdir: Path) -> list[dict]:
    """Parse the workflow with Snakemake's API and describe each rule (run in a subprocess)."""
    code = f"""
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (ConfigSettings, OutputSettings, ResourceSettings,
                                      StorageSettings, WorkflowSettings)
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=ConfigSettings(),
                      storage_settings=StorageSettings(), workflow_settings=WorkflowSettings(),
                      snakefile=Path({str(SNAKEFILE)!r}), workdir=Path({str(workdir)!r}))
    out = []
    for r in wf._workflow.rules:
        out.append(dict(name=r.name, norun=bool(r.norun), log=[str(x) for x in r.log],
                        benchmark=str(r.benchmark) if r.benchmark else None,
                        conda=str(r.conda_env) if r.conda_env else None,
                        resources=sorted(k for k in r.resources.keys() if not k.startswith("_"))))
    print("RULES-JSON" + json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RULES-JSON"))
    import json

    return json.loads(line[len("RULES-JSON"):])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("lint"))


@pytest.fixture(scope="module")
def rules(workdir) -> list[dict]:
    return _rules_of_workflow(workdir)


def test_lint_clean(workdir):
    # (snakemake 9.27 prints lints as text even with --lint=json; exit code 1 when there are any)
    proc = run_snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0 and "Lints for" not in proc.stderr + proc.stdout, (
        "snakemake --lint is not clean:\n" + proc.stderr[-8000:] + proc.stdout[-2000:]
    )


def test_rule_files_are_snakefmt_formatted():
    # the Snakemake catalog's convention; `snakefmt workflow/` fixes what this finds
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", str(REPO / "workflow")], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, "run `snakefmt workflow/`:\n" + proc.stdout[-3000:] + proc.stderr[-3000:]


def test_every_rule_has_log_benchmark_and_conda(rules):
    jobs = [r for r in rules if not r["norun"]]
    assert jobs, "no rules parsed"
    problems = []
    for r in jobs:
        if not r["log"]:
            problems.append(f"{r['name']}: no log:")
        if not r["benchmark"]:
            problems.append(f"{r['name']}: no benchmark:")
        if r["conda"] not in ("../envs/cpu.yaml", "../envs/gpu.yaml"):
            problems.append(f"{r['name']}: conda: {r['conda']} (want ENV_CPU or ENV_GPU)")
        # memory and time limits come from config['resources'] (sbatch --mem / -t); CPUs default to
        # the rule's threads (the plugin's --cpus-per-task) unless stage_resources() sets cpus_per_task
        for key in ("mem_mb", "runtime"):
            if key not in r["resources"]:
                problems.append(f"{r['name']}: resources lack {key} (use **stage_resources(stage))")
    assert not problems, "\n".join(problems)
    # logs and benchmarks live under {results}/logs/ and {results}/benchmarks/ (docs/architecture.md)
    for r in jobs:
        assert any("/logs/" in path for path in r["log"]), (r["name"], r["log"])
        assert "/benchmarks/" in r["benchmark"], (r["name"], r["benchmark"])


def test_gpu_stages_use_the_gpu_env(rules):
    for r in rules:
        if not r["norun"] and RESOURCE_STAGE.get(r["name"], r["name"]) in GPU_STAGES:
            assert r["conda"] == "../envs/gpu.yaml", r


def _planned_jobs(workdir: Path, *args: str) -> list[dict]:
    """Jobs of a dry run (rule name + resources as submitted): parse Snakemake's job blocks."""
    proc = run_snakemake(workdir, "--dry-run", *args)
    jobs, current = [], None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            current = {"rule": m.group(1), "resources": {}}
            jobs.append(current)
        elif current is not None and line.strip().startswith("Shell command:"):
            current["shell"] = line.split(":", 1)[1].strip()
        elif current is not None and line.strip().startswith("resources:"):
            for item in line.split(":", 1)[1].split(","):
                if "=" in item:
                    k, v = item.strip().split("=", 1)
                    current["resources"][k] = v
    assert jobs, proc.stdout[-4000:]
    return jobs


def test_dry_run_plans_the_demo(workdir, rules):
    proc = run_snakemake(workdir, "--dry-run", "--quiet", "rules")
    defined = {r["name"] for r in rules if not r["norun"]}
    planned = {ln.split()[0] for ln in proc.stdout.splitlines()
               if re.match(r"^\w+\s+\d+$", ln.strip()) and ln.split()[0] not in ("total", "all")}
    # on an empty working directory every stage of the demo is planned
    expected = defined & {"synth", "tile_slide", "select_targets", "normalize_store", "restain_store", "pretrain_run",
                          "embed_run", "finetune_run", "predict_store", "evaluate_method", "summarize", "report"}
    assert expected <= planned, f"not planned: {sorted(expected - planned)}\n{proc.stdout}"


# `snakemake <stage>`: the per-item rules of that stage and what they need, nothing downstream
_EMBED = {"synth", "tile_slide", "pretrain_run", "embed_run"}  # embed_run: the sources' train/val stores only
_PREDICT = _EMBED | {"finetune_run", "select_targets", "normalize_store", "restain_store", "predict_store"}
STAGE_TARGET_PLANS = {
    "tile": {"synth", "tile_slide"},
    "normalize": {"synth", "tile_slide", "select_targets", "normalize_store", "restain_store", "normalize_montage"},
    "pretrain": {"synth", "tile_slide", "pretrain_run"},
    "embed": _EMBED,
    "finetune": _EMBED | {"finetune_run"},
    "predict": _PREDICT,
    "evaluate": _PREDICT | {"evaluate_method", "summarize"},
    "slide_view": _PREDICT | {"slide_view_method"},
}


STAGE_OWN_RULES = {"tile": {"tile_slide"}, "normalize": {"select_targets", "normalize_store", "restain_store",
                                                         "normalize_montage"},
                   "pretrain": {"pretrain_run"}, "embed": {"embed_run"}, "finetune": {"finetune_run"},
                   "predict": {"predict_store"},
                   "evaluate": {"evaluate_method", "summarize"}, "slide_view": {"slide_view_method"}}


def _planned_counts(workdir: Path, *args: str) -> dict[str, int]:
    proc = run_snakemake(workdir, *args, "--dry-run", "--quiet", "rules")
    return {ln.split()[0]: int(ln.split()[1]) for ln in proc.stdout.splitlines()
            if re.match(r"^\w+\s+\d+$", ln.strip()) and ln.split()[0] != "total"}


@pytest.fixture(scope="module")
def all_jobs(workdir) -> dict[str, int]:
    return _planned_counts(workdir, "--forceall")


@pytest.mark.parametrize("stage", sorted(STAGE_TARGET_PLANS))
def test_stage_target_plans_that_stage_for_every_item(workdir, all_jobs, stage):
    counts = _planned_counts(workdir, stage)
    jobs = {rule for rule in counts if rule != stage}
    assert jobs == STAGE_TARGET_PLANS[stage], f"snakemake {stage} plans {counts}"
    # the stage's own rules run for every item (slide, run, method) the full workflow has
    assert {rule: counts[rule] for rule in STAGE_OWN_RULES[stage]} == \
        {rule: all_jobs[rule] for rule in STAGE_OWN_RULES[stage]}, (counts, all_jobs)


def test_gpu_rules_request_gpus_and_partitions(tmp_path, rules):
    """Config-driven placement: GPU stages get gpu=N + the gpu partition, CPU stages the cpu one."""
    defined = {r["name"] for r in rules}
    overrides = {"resources": {
        "default": {"partition": "cpu"},
        "gpu": {"partition": "gpu", "gpu_model": "a100", "slurm_extra": "--qos=gpu"},
        "pretrain": {"gpus": 2},
        "embed": {"gpus": 1},
        "finetune": {"gpus": 0},
    }}
    work = make_workdir(tmp_path, overrides)
    jobs = _planned_jobs(work, "--printshellcmds")
    by_rule, shell = {}, {}
    for j in jobs:
        by_rule.setdefault(j["rule"], j["resources"])
        shell.setdefault(j["rule"], j.get("shell", ""))
    # 2 GPUs: one job, one node, torchrun starting one process per GPU
    assert by_rule["pretrain_run"].get("gpu") == "2", by_rule["pretrain_run"]
    assert "torchrun --standalone --nnodes=1 --nproc_per_node=2 " in shell["pretrain_run"], shell["pretrain_run"]
    assert "pretrain_run" in by_rule or "pretrain_run" not in defined, "pretrain_run not planned"
    for rule, resources in by_rule.items():
        if rule == "all":
            continue
        stage = RESOURCE_STAGE.get(rule, rule)
        if stage in ("pretrain", "embed"):
            assert resources.get("gpu") == ("2" if stage == "pretrain" else "1"), (rule, resources)
            assert resources.get("gpu_model") == "a100", (rule, resources)
            assert resources.get("slurm_partition") == "gpu", (rule, resources)
            assert resources.get("slurm_extra") == "--qos=gpu", (rule, resources)
        else:
            assert "gpu" not in resources, (rule, resources)
            assert resources.get("slurm_partition") == "cpu", (rule, resources)


def test_profiles_parse_as_intended():
    """The local profile runs locally; the slurm profile selects the executor whichever way it is given.

    Snakemake always also loads workflow/profiles/default as the *workflow* profile, and its values
    win over `--profile`; `--workflow-profile workflow/profiles/slurm` replaces it (docs/cluster.md).
    """
    from snakemake.cli import get_argument_parser

    def parsed(*profiles):
        return get_argument_parser(profiles=[str(p) for p in profiles]).parse_args([])

    local = parsed(PROFILES / "default")
    assert local.executor in (None, "local") and local.cores == 2 and local.rerun_incomplete
    assert {t.name for t in local.rerun_triggers} == {"MTIME", "PARAMS", "INPUT", "CODE", "SOFTWARE_ENV"}
    as_workflow_profile = parsed(PROFILES / "default", PROFILES / "slurm")   # --workflow-profile slurm
    as_profile = parsed(PROFILES / "slurm", PROFILES / "default")            # --profile slurm
    for args in (as_workflow_profile, as_profile):
        assert args.executor == "slurm"
        assert args.jobs == 50
        assert args.rerun_incomplete
    assert as_workflow_profile.latency_wait == 60 and as_workflow_profile.keep_going


def test_shell_commands_quote_paths_with_spaces_and_command_substitution(tmp_path: Path) -> None:
    # `results:` is config; the one shell rule (pretrain) must pass it through as literal words
    import shlex

    results = "res ults/$(touch PWNED)"
    # the demo sheet names its generated slides {results}/synth/…: they follow the changed folder
    work = make_workdir(tmp_path, {"results": results, "pretrain": {"methods": ["baseline"], "sources": ["center_a"]}})
    proc = run_snakemake(work, "--dry-run", "--printshellcmds", "--forceall")
    lines = [ln for ln in proc.stdout.splitlines() if "scripts/pretrain.py" in ln]
    assert lines, proc.stdout[-3000:]
    words = shlex.split(lines[0].split("Shell command:", 1)[-1])
    run_dir = f"{results}/models/baseline/center_a/seed0"
    assert words[words.index("--out-dir") + 1] == run_dir
    stores = words[words.index("--stores") + 1:words.index("--log-file")]
    assert stores == [f"{results}/tiles/a_train1.zarr", f"{results}/tiles/a_train2.zarr"]
    assert words[words.index("--log-file") + 1] == f"{results}/logs/pretrain/baseline/center_a/seed0.log"
    assert not list(work.rglob("PWNED"))


def test_a_test_only_crop_set_is_never_used_for_training_validation_or_targets(tmp_path: Path) -> None:
    """`role: test_only` (issue 12): its stores are scored (embedded, normalized, shown) but no job that
    trains, selects or draws a stain target takes them as input."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,label,domain,slide"]
    for g in range(4):
        for k in range(2):
            (tmp_path / "crops").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"crops/{g}_{k}.png")
            rows.append(f"{g}_{k}.png,{'a' if k else 'b'},newscanner,s{g}")
    (tmp_path / "crops/labels.csv").write_text("\n".join(rows) + "\n")
    work = make_workdir(tmp_path / "w", {
        "crops": [{"name": "ext", "folder": str(tmp_path / "crops"), "group_column": "slide", "role": "test_only"}],
        "pretrain": {"methods": ["baseline"], "sources": ["each", "loco"]}})
    proc = run_snakemake(work, "--dry-run", "--forceall")
    inputs_of: dict[str, list[str]] = {}
    rule = None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("input:"):
            inputs_of.setdefault(rule, []).append(line.split(":", 1)[1])
    store = "results/tiles/ext-newscanner-test.json"
    users = {r for r, lines in inputs_of.items() if any(store in ln for ln in lines)} - {"all"}
    assert users == {"normalize_store", "restain_store", "normalize_montage", "predict_store", "slide_view_method"}, users
    # no source is made of it: the runs are the three centers alone and leave-one-out
    runs = {m.group(1) for m in re.finditer(r"output: results/models/baseline/([^/]+)/seed0/encoder\.pt", proc.stdout)}
    assert runs == {"center_a", "center_b", "center_c", "loco-center_a", "loco-center_b", "loco-center_c"}, runs
