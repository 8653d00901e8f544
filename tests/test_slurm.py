"""The demo through a real SLURM: one-node cluster on localhost, `--executor slurm`, same results.

tests/slurm/ci-slurm.sh brings up munged + slurmctld + slurmd (partitions `cpu` and `gpu`, two fake
GPUs backed by character devices) and tears them down by PID afterwards, also when the test fails.
The CI_MINI demo (tests/cluster_helpers.py: every stage, one pretraining method) runs through the
slurm workflow profile, the GPU rule (pretrain, gpus: 1) must land on the `gpu` partition with a GPU
allocated, every CPU rule on `cpu`, and the results must equal a local run's: tile stores array by
array, metrics CSVs value by value, models tensor by tensor (cluster_helpers.compare_results).
The run uses docs/cluster.md's grouping recipe for the many small `predict_store` jobs
(PREDICT_GROUP): they must reach SLURM as one sbatch job.

Skipped (with the reason) when not root, when `STAINSHIFT_SKIP_SLURM` is set, or when SLURM is not
installed and cannot be installed with apt-get. CI runs as root on the same machine kind, so it runs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_helpers import CI_MINI, base_run, compare_results, snakemake_cmd
from workflow_helpers import REPO, make_workdir

pytestmark = pytest.mark.slow

SCRIPT = REPO / "tests" / "slurm" / "ci-slurm.sh"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
# No accounting on the CI cluster: squeue as status command, else the plugin never sees jobs finish
# (../shared/slurm-local.md, gotcha 1); short polling intervals keep the run short.
CI_STATUS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
             "--seconds-between-status-checks", "2"]
SLURM_RUN_TIMEOUT_S = 1800
# docs/cluster.md, "Many small jobs": every predict_store job of the run in one group job
PREDICT_GROUP = ["--groups", "predict_store=predict", "--group-components", "predict=16"]
TIMINGS: dict[str, float] = {}


def _why_not_runnable() -> str | None:
    if os.environ.get("STAINSHIFT_SKIP_SLURM"):
        return "STAINSHIFT_SKIP_SLURM is set"
    if not sys.platform.startswith("linux"):
        return "the CI SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "the CI SLURM cluster needs root (it installs slurm-wlm/munge and starts system daemons)"
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)
    if not shutil.which("sbatch"):
        t0 = time.monotonic()
        proc = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=1200)
        TIMINGS["install_s"] = time.monotonic() - t0
        if proc.returncode != 0:
            pytest.skip(f"could not install slurm-wlm/munge with apt-get: {proc.stderr[-1500:]}")
    if subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0:
        # somebody's cluster is already up (e.g. a developer's): use it, never tear it down
        yield {"started_here": False}
        return
    t0 = time.monotonic()
    proc = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=600)
    TIMINGS["slurm_up_s"] = time.monotonic() - t0
    if proc.returncode != 0:  # the script has already stopped whatever it started
        pytest.fail(f"tests/slurm/ci-slurm.sh up failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    try:
        yield {"started_here": True}
    finally:
        t0 = time.monotonic()
        down = subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, timeout=300)
        TIMINGS["slurm_down_s"] = time.monotonic() - t0
        print(f"\n[slurm] timings: {', '.join(f'{k}={v:.1f}' for k, v in TIMINGS.items())}")
        assert down.returncode == 0, f"ci-slurm.sh down failed:\n{down.stderr}"


def _scontrol_jobs(workdir: Path) -> list[dict[str, str]]:
    """Jobs the controller still knows (MinJobAge=3600 on the CI cluster) that ran in `workdir`."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if fields.get("WorkDir") == str(workdir):
            # a single job's comment is rule_<rule>[_wildcards_<values>], a group job's rule_<group>_<rules>
            m = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", fields.get("Comment", ""))
            fields["rule"] = m.group(1) if m else "?"
            jobs.append(fields)
    return jobs


def test_demo_through_slurm_equals_local_run(slurm_cluster, tmp_path_factory):
    work = make_workdir(tmp_path_factory.mktemp("ci-mini-slurm"), {
        **CI_MINI,
        "resources": {**CI_MINI["resources"], "default": {**CI_MINI["resources"]["default"], "partition": "cpu"},
                      "gpu": {"partition": "gpu"}},
    }).resolve()
    cmd, env = snakemake_cmd(work, "--workflow-profile", str(SLURM_PROFILE), "--jobs", "4", *CI_STATUS,
                             *PREDICT_GROUP, "--slurm-keep-successful-logs")
    # SIGINT, not SIGTERM: only SIGINT makes Snakemake scancel its jobs and exit (slurm-local.md gotcha 2)
    cmd = ["timeout", "-s", "INT", "-k", "60", str(SLURM_RUN_TIMEOUT_S), *cmd]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SLURM_RUN_TIMEOUT_S + 120)
    TIMINGS["slurm_run_s"] = time.monotonic() - t0
    print(f"\n[slurm] slurm run {TIMINGS['slurm_run_s']:.0f} s")
    assert proc.returncode == 0, (
        f"snakemake --executor slurm failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-10000:]}")
    assert "Provided remote nodes" in proc.stdout + proc.stderr, "did not run through the slurm executor"

    # every job ran on the cluster, on the partition its resources ask for
    jobs = _scontrol_jobs(work)
    assert jobs, "scontrol knows no job of this run"
    assert all(j["JobState"] == "COMPLETED" for j in jobs), [(j["JobId"], j["rule"], j["JobState"]) for j in jobs]
    rules = {j["rule"] for j in jobs}
    stages = {"synth", "tile_slide", "pretrain_run", "evaluate_method"}
    assert stages | {"predict_store"} <= _defined_rules(proc), sorted(_defined_rules(proc))
    assert stages <= rules, f"no SLURM job of rules {sorted(stages - rules)}: {sorted(rules)}"
    # the grouping recipe: every predict_store job (one per test store) inside one sbatch job
    assert "predict_predict_store" in rules and "predict_store" not in rules, sorted(rules)
    assert sum(j["rule"] == "predict_predict_store" for j in jobs) == 1, sorted(j["rule"] for j in jobs)
    for j in jobs:
        if j["rule"] == "pretrain_run":
            assert j["Partition"] == "gpu", j
            assert "gres:gpu:1" in j.get("TresPerJob", ""), f"pretrain got no GPU: {j.get('TresPerJob')}"
        else:
            assert j["Partition"] == "cpu", (j["rule"], j["Partition"])
            assert "gpu" not in j.get("TresPerJob", ""), (j["rule"], j.get("TresPerJob"))
    # the GPU job saw its (fake) GPU, torch found no CUDA, and training fell back to CPU with a log line
    pretrain_log = (work / "results" / "logs" / "pretrain" / "baseline" / "center_a" / "seed0.log").read_text()
    assert re.search(r"no CUDA device.*CPU", pretrain_log), pretrain_log[-2000:]

    local, local_s = base_run(tmp_path_factory)  # the session's local run (shared with test_reruns.py)
    TIMINGS["local_run_s"] = local_s
    print(f"[slurm] local run {local_s:.0f} s")
    counts = compare_results(local / "results", work / "results")
    print(f"[slurm] compared with the local run: {dict(counts)}")
    assert counts["zarr"] >= 9 and counts[".csv"] >= 1 and counts[".pt"] >= 1, dict(counts)


def _defined_rules(proc: subprocess.CompletedProcess) -> set[str]:
    """Rules named in the run's job-stats table (what the DAG contained)."""
    rules = set()
    for line in (proc.stdout + proc.stderr).splitlines():  # Snakemake logs the table to stderr
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if m and m.group(1) not in ("total", "all"):
            rules.add(m.group(1))
    return rules
