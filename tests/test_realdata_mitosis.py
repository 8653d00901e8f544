"""The whole pipeline on the real mitosis crops (config/examples/mitosis.yaml, tiny settings):
train on each scanner/cohort domain, test on the others. Skipped when ../shared/data is absent."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_helpers import REPO, make_workdir, run_snakemake

pytestmark = pytest.mark.realdata

DOMAINS = {"midog21_hamamatsu_xr", "midog21_hamamatsu_s360", "tupac16", "tcga_brca"}
METHODS = ["baseline", "simclr"]
METHODS_ALL = ["baseline", "simclr", "lmc", "stain_embed", "sassl"]  # config.yaml's pretrain.methods


def mitosis_overrides(shared_data: Path) -> dict:
    """config/examples/mitosis.yaml with the crop folders pointed at ``shared_data`` and CI-sized
    training (2 methods, 1 epoch, 32 px, one source per domain, 1 normalization target)."""
    cfg = yaml.safe_load((REPO / "config" / "examples" / "mitosis.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    for entry in cfg["crops"]:
        entry["folder"] = str(shared_data / Path(entry["folder"]).name)
        entry["patch_size"] = 32
    cfg["results"] = "results"
    cfg["pretrain"] = {"methods": METHODS, "sources": ["each"], "on_no_learning": "flag",
                       "defaults": {"epochs": 1, "batch_size": 32}}
    cfg["normalize"] = {"methods": ["reinhard"], "targets": {"mode": "random", "k": 1, "split": "test", "seed": 0}}
    cfg.setdefault("finetune", {}).update({"epochs": 10, "full": {"epochs": 1}})
    cfg["evaluate"].update({"bootstrap": 30, "embedding_map": "pca", "w2_max_samples": 100})
    return cfg


@pytest.fixture(scope="module")
def mitosis_run(shared_data, tmp_path_factory) -> Path:
    work = make_workdir(tmp_path_factory.mktemp("mitosis"), mitosis_overrides(shared_data))
    run_snakemake(work, timeout=2400)
    run_snakemake(work, "--report", str(work / "report.html"), timeout=600)
    return work


@pytest.mark.slow
def test_cross_center_tables_cover_every_domain_pair(mitosis_run):
    s = pd.read_csv(mitosis_run / "results" / "metrics" / "summary.csv", dtype={"source": str, "test": str})
    assert set(s["method"]) == set(METHODS)
    for m in METHODS:
        cells = s[(s.method == m) & (s.kind == "cell") & (s.metric == "accuracy") & (s.protocol == "probe")]
        assert set(cells["test"]) == DOMAINS and set(cells["source"]) == DOMAINS and len(cells) == 4 * 4
        assert cells["value"].between(0, 1).all()
        assert (cells["seen"].astype(str) == "True").sum() == 4  # only the diagonal was seen
        # crops of a real scanner: every cell has an interval around its value
        assert (cells["ci_low"] <= cells["value"] + 1e-9).all() and (cells["value"] <= cells["ci_high"] + 1e-9).all()
        head = s[(s.method == m) & (s.kind == "headline") & (s.metric == "auc") & (s.protocol == "probe")]
        assert set(head["test"]) == {"in_center", "unseen", "drop"}
        # patients/slides where the domain has them (ami_br), crops where it has none (atnorm_br)
        assert cells["unit"].notna().all()
    paired = s[(s.kind == "paired") & (s.metric == "delta_drop_accuracy") & (s.protocol == "probe")]
    assert set(paired["method"]) == {"simclr"} and np.isfinite(paired["value"]).all()


@pytest.mark.slow
def test_figures_report_and_summary(mitosis_run):
    r = mitosis_run / "results"
    for m in METHODS:
        for f in ("cross_center_heatmap", "roc", "embedding_map"):
            assert (r / "plots" / m / f"{f}.png").stat().st_size > 5000
    assert (r / "plots" / "variant_accuracy.png").is_file()
    md = (r / "report" / "summary.md").read_text()
    assert "Closing note" in md and "tcga_brca" in md and "midog21_hamamatsu_xr" in md
    html = (mitosis_run / "report.html")
    assert html.is_file() and html.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# The evaluation stage alone on the real crops (no training DAG): a fixed colour/texture feature
# and a logistic-regression head per domain, scored on every domain's held-out slides. Exercises
# the same library calls as the `evaluate` rule on real cross-scanner data in a few seconds.
def _features(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    out = []
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
        c = x[32:96, 32:96]  # the mitotic figure sits in the centre of the 128 px crop
        g = c.mean(2)
        gy, gx = np.gradient(g)
        out.append(np.concatenate([x.mean((0, 1)), x.std((0, 1)), c.mean((0, 1)), c.std((0, 1)),
                                   np.percentile(g, [5, 25, 50]), [np.hypot(gx, gy).mean()]]))
    return np.asarray(out)


def _real_predictions(shared_data: Path) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from stainshift.embeddings import prediction_frame

    ami = pd.read_csv(shared_data / "ami_br" / "labels.csv").assign(folder="ami_br")
    atn = pd.read_csv(shared_data / "atnorm_br" / "labels.csv").assign(folder="atnorm_br", domain="tcga_brca")
    atn["slide"] = [f"crop{i}" for i in range(len(atn))]  # no slide ids in AtNorM-Br
    df = pd.concat([ami[["path", "label", "domain", "slide", "folder"]], atn[["path", "label", "domain", "slide", "folder"]]],
                   ignore_index=True)
    df["y"] = (df["label"] == "atypical").astype(int)
    feats = _features([shared_data / f / p for f, p in zip(df["folder"], df["path"])])
    df["split"] = "train"
    for dom, part in df.groupby("domain"):
        tr, te = next(GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0).split(part, part["y"], part["slide"]))
        df.loc[part.index[te], "split"] = "test"
    test = df[df["split"] == "test"]
    frames = []
    for source in sorted(DOMAINS):  # one head per domain (source kind "center"), scored on every domain
        part = df[(df["split"] == "train") & (df["domain"] == source)]
        clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
        clf.fit(feats[part.index], part["y"])
        for dom, tp in test.groupby("domain"):
            meta = dict(method="colour_lr", source=source, source_kind="center", seed=0, protocol="probe",
                        encoder_centers=source, head_centers=source, store=f"mitosis-{dom}-test", test=dom, split="test")
            frame = prediction_frame(clf.predict_proba(feats[tp.index]), meta=meta, index=tp.index.to_numpy(),
                                     label=tp["y"].to_numpy(), threshold=0.5)
            frame["slide_id"] = tp["slide"].astype(str).to_numpy()
            frame["patient"] = frame["slide_id"]
            frames.append(frame)
    return pd.concat(frames, ignore_index=True), feats, df


def test_evaluation_on_real_crops_train_one_domain_test_the_others(shared_data):
    from stainshift.metrics import pipeline as pl
    from stainshift.metrics import robustness as rob
    from stainshift.metrics import batch_effect as be

    preds, feats, df = _real_predictions(shared_data)
    cfg = pl.EvalConfig(bootstrap=100)
    t = pl.cross_center(preds, "colour_lr", cfg)
    auc = t[(t.metric == "auc") & (t.kind == "cell")]
    assert set(auc["source"]) == DOMAINS and set(auc["test"]) == DOMAINS and len(auc) == 16
    assert auc["value"].between(0, 1).all()
    assert (auc["seen"] == (auc["source"] == auc["test"])).all()
    units = auc.groupby("test")["unit"].first()
    assert "patient" in units["midog21_hamamatsu_xr"] and "tile" in units["tcga_brca"]  # slides where given
    unseen = t[(t.kind == "unseen_mean") & (t.metric == "balanced_accuracy")]
    assert len(unseen) == 4 and (unseen["ci_low"] <= unseen["value"]).all() and (unseen["value"] <= unseen["ci_high"]).all()
    # neighbourhood structure of the colour features over the four domains (same-slide neighbours excluded)
    test = df[df["split"] == "test"]
    ri = rob.robustness_index(feats[test.index], test["y"].to_numpy(), test["domain"].to_numpy(),
                              test["slide"].astype(str).to_numpy(), k_candidates=[5, 11, 21])
    assert 0 < ri.value < 1 and ri.support > 0.5 and ri.k in (5, 11, 21)
    w2 = be.w2_between_centers(feats[test.index], test["domain"], test["y"], max_samples=200)
    assert len(w2) == 6 * 3 * 2 and (w2["value"] > 0).all()


def test_example_config_as_shipped_plans_its_dag(shared_data, tmp_path):
    """`snakemake --configfile config/examples/mitosis.yaml` (the README's command) parses and plans:
    the example's own settings, only the crop folders pointed at ``shared_data``. A real-data study
    has no synthetic centers, so the synthetic nuclei dataset is skipped with a note, not an error."""
    cfg = yaml.safe_load((REPO / "config" / "examples" / "mitosis.yaml").read_text())
    for entry in cfg["crops"]:
        entry["folder"] = str(shared_data / Path(entry["folder"]).name)
    work = make_workdir(tmp_path, cfg, tiny=False)
    proc = run_snakemake(work, "--dry-run", timeout=600)
    out = proc.stdout + proc.stderr
    assert "nuclei dataset 'synthetic' skipped" in out
    planned = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert planned["pretrain_run"] == 4 * len(cfg["pretrain"].get("methods") or METHODS_ALL)
    assert "nuclei_fields" not in planned

