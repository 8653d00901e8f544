# Shared parse-time state: validated config, the sample sheet, the store table, helpers for rules.
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from stainshift.validation import load_sample_sheet, validate_config

SCHEMAS = Path(workflow.basedir) / "schemas"

# Clear messages first (every bad key at once, by path), then Snakemake's own validation
# (which also fills schema defaults).
validate_config(config, SCHEMAS / "config.schema.yaml")
validate(config, SCHEMAS / "config.schema.yaml")
from stainshift.train.config import check_pretrain_config, settings_of

check_pretrain_config(config["pretrain"])  # unknown / mistyped method settings, by key

RESULTS = config["results"].rstrip("/")
SYNTH_DIR = f"{RESULTS}/synth"
ENV_CPU = "../envs/cpu.yaml"
ENV_GPU = "../envs/gpu.yaml"

SAMPLES = load_sample_sheet(
    config["samples"],
    SCHEMAS / "samples.schema.yaml",
    base_dir=".",
    generated_prefixes=[SYNTH_DIR] if config["synth"]["enabled"] else [],
    results=RESULTS,
)
SLIDES = list(SAMPLES["slide_id"])
from stainshift.validation import check_slide_label_classes, check_slide_pixel_sizes

check_slide_label_classes(SAMPLES, config["samples"], config["pretrain"]["train_split"])
# slides without an 'mpp' cell: their headers are read now (cached in .snakemake/), not at tile time
check_slide_pixel_sizes(
    SAMPLES,
    config["samples"],
    generated_prefixes=[SYNTH_DIR] if config["synth"]["enabled"] else [],
    cache_file=Path(".snakemake") / "stainshift" / "slide_headers.json",
)

# --- Patch stores (issue 3) -----------------------------------------------------------------------
# STORES: one row per patch store {RESULTS}/tiles/{store_id}.zarr, indexed by store_id, columns
# center, split, patient, kind (slide = a sample-sheet row, tiled by rule `tile_slide`; crops = a
# {set}-{domain}-{split} store of a config `crops:` entry, written by rule `import_crops`).
from stainshift.cropsets import plan_crop_stores

CROP_ENTRIES = {e["name"]: e for e in config.get("crops") or []}
# class names for tables and figures: tiling.class_names, else the crop sets' classes, else "class k"
CLASS_NAMES = config["tiling"].get("class_names") or next(
    (list(e["classes"]) for e in CROP_ENTRIES.values() if e.get("classes")), None
)
_crop_rows = plan_crop_stores(list(CROP_ENTRIES.values()), base_dir=".")
CROP_STORE_IDS = [r["store_id"] for r in _crop_rows]
STORES = pd.DataFrame(
    [
        {"store_id": s, "center": r.center, "split": r.split, "patient": r.patient, "kind": "slide", "set": None}
        for s, r in zip(SAMPLES["slide_id"], SAMPLES.itertuples())
    ]
    + _crop_rows,
    columns=["store_id", "center", "split", "patient", "kind", "set"],
).set_index("store_id", drop=False)
if STORES.index.duplicated().any():
    raise ValueError(
        f"store ids clash between the sample sheet and crop sets: {sorted(STORES.index[STORES.index.duplicated()])}"
    )

STORE_IDS = list(STORES.index)  # every patch store: tiled slides, then crop stores
CENTERS = sorted(STORES["center"].unique())

# Each rules file registers a function returning the final targets it contributes to `rule all`.
TARGET_FUNCS = []


def all_targets(wildcards=None):
    return [t for f in TARGET_FUNCS for t in f()]


def stores_where(split=None, center=None):
    """Patch-store ids (slides and crop stores), optionally filtered by split and/or center."""
    df = STORES
    if split is not None:
        df = df[df["split"] == split]
    if center is not None:
        df = df[df["center"] == center]
    return list(df["store_id"])


def log_path(stage, name="{slide}"):
    return f"{RESULTS}/logs/{stage}/{name}.log"


def bench_path(stage, name="{slide}"):
    return f"{RESULTS}/benchmarks/{stage}/{name}.tsv"


# --- Cluster resources (issue 8; docs/cluster.md) -------------------------------------------------
# Every rule takes its threads and resources from config['resources'], so one config change moves a
# stage between partitions or gives it GPUs; profiles hold no per-rule numbers. Usage in a rule body -
#     threads: stage_threads("tile")
#     resources: **stage_resources("tile")
# Precedence per key: resources.<stage>  >  resources.gpu (only when the stage asks for gpus > 0)
#                     >  resources.default.
# Keys understood (all optional except what `default` sets):
#   mem_mb, runtime (minutes), cpus          -> mem_mb, runtime, cpus_per_task (sbatch --mem/-t/-c)
#   partition                                -> slurm_partition (-p); null = the cluster's default
#   gpus (int)                               -> gpu (sbatch --gpus=N); 0 = a CPU job
#   gpu_model, constraint, slurm_extra       -> gpu_model (--gpus=model:N), constraint (-C), slurm_extra
# Locally these resources constrain nothing (Snakemake only limits resources given with
# --resources, e.g. `--resources gpu=1` on a one-GPU workstation); the GPU scripts fall back to CPU
# themselves when torch sees no CUDA device.
os.environ.setdefault("STAINSHIFT_ROOT", str(Path(workflow.basedir).parent))  # for envs/*.yaml `-e ${STAINSHIFT_ROOT}`


def stage_config(stage):
    """Merged resource settings of a stage (default < gpu class when gpus > 0 < the stage's own)."""
    table = config["resources"]
    merged = dict(table["default"])
    own = table.get(stage, {})
    if int(own.get("gpus", merged.get("gpus", 0)) or 0) > 0:
        merged.update(table.get("gpu", {}))
    merged.update(own)
    return merged


def stage_gpus(stage):
    """GPUs a stage asks for (0 = CPU job). > 1 means one job running torchrun over that many GPUs."""
    return int(stage_config(stage).get("gpus", 0) or 0)


def stage_resources(stage):
    """Resources for the rules of `stage`, to be unpacked: resources= **stage_resources(stage)."""
    cfg = stage_config(stage)
    out = {"mem_mb": int(cfg["mem_mb"]), "runtime": int(cfg["runtime"]), "cpus_per_task": int(cfg.get("cpus", 1))}
    if cfg.get("partition"):
        out["slurm_partition"] = cfg["partition"]
    gpus = stage_gpus(stage)
    if gpus > 0:
        out["gpu"] = gpus
        if cfg.get("gpu_model"):
            out["gpu_model"] = cfg["gpu_model"]
    if cfg.get("constraint"):
        out["constraint"] = cfg["constraint"]
    if cfg.get("slurm_extra"):
        out["slurm_extra"] = cfg["slurm_extra"]
    return out


def stage_threads(stage):
    """Threads for the rules of `stage` (its merged `cpus`; Snakemake caps it at --cores locally)."""
    return int(stage_config(stage).get("cpus", 1))


def torchrun_prefix(stage):
    """How a GPU stage launches Python: plain `python` for <= 1 GPU, else one-node torchrun over all GPUs."""
    gpus = stage_gpus(stage)
    if gpus <= 1:
        return "python"
    return f"torchrun --standalone --nnodes=1 --nproc_per_node={gpus}"


# --- Synthetic slides (rules/synth.smk) -------------------------------------------------------------
from stainshift.synth import CENTERS as SYNTH_CENTERS


def _check_synth_centers():
    """Fail at parse time, naming the rows, when a generated slide asks for an unknown center."""
    if not config["synth"]["enabled"]:
        return
    bad = [
        f"  - slide_id={sid!r}: center {c!r}"
        for sid, p, c in zip(SAMPLES["slide_id"], SAMPLES["path"], SAMPLES["center"])
        if str(p).startswith(f"{SYNTH_DIR}/") and c not in SYNTH_CENTERS
    ]
    if bad:
        raise ValueError(
            f"sample sheet '{config['samples']}': rows generated under {SYNTH_DIR}/ need a synthetic center "
            f"({', '.join(sorted(SYNTH_CENTERS))}):\n" + "\n".join(bad)
        )


_check_synth_centers()


def synth_slide_params(wildcards):
    row = SAMPLES.loc[wildcards.slide]
    return {"center": row["center"], "slide_id": wildcards.slide, **config["synth"]}


def synth_targets():
    if not config["synth"]["enabled"]:
        return []
    return [p for p in SAMPLES["path"] if str(p).startswith(f"{SYNTH_DIR}/")]


# --- Tile stage (rules/tile.smk) -------------------------------------------------------------------
import re


def _alternatives(ids):
    return "|".join(re.escape(i) for i in ids) if ids else "(?!x)x"


def tile_inputs(wildcards):
    row = SAMPLES.loc[wildcards.slide]
    inputs = {"slide": row["path"]}
    annotation = row.get("annotation")
    if isinstance(annotation, str) and annotation:  # an empty cell reads as None or NaN
        inputs["annotation"] = annotation
    return inputs


def tile_row(wildcards):
    row = SAMPLES.loc[wildcards.slide]
    return {k: (None if pd.isna(v) else v) for k, v in row.items()} | {"slide_id": wildcards.slide}


def crop_store_entry(wildcards):
    return CROP_ENTRIES[STORES.loc[wildcards.store, "set"]]


def tile_targets():
    return [tile_manifest(s) for s in STORES.index] + [f"{RESULTS}/qc/{s}.png" for s in SLIDES]


# --- Training stages (rules/train.smk): sources, replicate seeds, runs -----------------------------
# A run = (method, source, seed): its own encoder, heads, embeddings and predictions, trained only on
# the source's centers' train/val stores (stainshift.protocol; DESIGN.md "Evaluation protocol").
from stainshift.protocol import join_centers, parse_sources

from stainshift.train.config import builtin_methods

TRAINED_METHODS = list(config["pretrain"]["methods"])
# external encoders (stainshift.external): loaded from a file by rule import_encoder, then evaluated as methods.
# That module imports torch (≈ 2 s), so only a config that lists external encoders pays for it at parse time.
if config.get("external"):
    from stainshift.external import check_entries

    EXTERNAL = check_entries(config["external"], reserved=builtin_methods())
else:
    EXTERNAL = {}
METHODS = TRAINED_METHODS + list(EXTERNAL)
if not METHODS:
    raise ValueError("nothing to evaluate: pretrain.methods is empty and the config lists no external encoders")


def _init_file(method):
    """The state-dict file pretrain.<method>.init starts the encoder from (None without init)."""
    init = (config["pretrain"].get(method) or {}).get("init")
    return init["file"] if init else None


_missing_init = [
    f"  - pretrain.{m}.init.file: {_init_file(m)!r} does not exist"
    for m in TRAINED_METHODS
    if _init_file(m) and not Path(_init_file(m)).is_file()
]
if _missing_init:
    raise ValueError("invalid config:\n" + "\n".join(_missing_init))
TRAIN_SPLIT = config["pretrain"]["train_split"]
VAL_SPLIT = config["finetune"]["val_split"]
SOURCES = parse_sources(
    config["pretrain"]["sources"],
    [c for c in CENTERS if stores_where(split=TRAIN_SPLIT, center=c)],
    TRAIN_SPLIT,
)
SEEDS = [int(s) for s in config["pretrain"]["seeds"]]
RUNS = [(m, s, k) for m in METHODS for s in SOURCES for k in SEEDS]
# (source, seed) of every run of a method, in RUNS order
METHOD_RUNS = {m: [(source, seed) for mm, source, seed in RUNS if mm == m] for m in METHODS}
TEST_STORE_IDS = stores_where(split="test")
if "by_store" in SOURCES:
    raise ValueError(
        "invalid config: a center (training source) may not be named 'by_store': "
        "results/embeddings/<method>/by_store/ holds the per-test-store embeddings"
    )


def _fusion_methods():
    """finetune.fusion restricted to the methods this config pretrains. An overlay that narrows
    pretrain.methods keeps the base config's fusion list (Snakemake merges dicts, replaces lists),
    so a fusion method that is not run is skipped with a note on stderr, not an error."""
    listed = list(config["finetune"].get("fusion") or [])
    skipped = [m for m in listed if m not in TRAINED_METHODS]
    if skipped:
        print(
            f"note: finetune.fusion {skipped} not in pretrain.methods {TRAINED_METHODS}; no fusion run for them",
            file=sys.stderr,
        )
    return [m for m in listed if m in TRAINED_METHODS]


FUSION_METHODS = _fusion_methods()


def native_downstream(method):
    """The method's own seed downstream, evaluated beside the common linear probe:
    ``end_to_end`` (its pretraining classifier: baseline, stain_embed, stain_embed_c — seed 000),
    ``fusion`` (full fine-tuning with seed 002's fusion encoder, for methods in finetune.fusion),
    ``full`` (an external encoder with ``finetune: full``: encoder + head fine-tuned),
    or None (the seed's downstream is the frozen-feature probe itself: simclr 001, lmc 003; a
    frozen external encoder)."""
    if method in EXTERNAL:
        return "full" if EXTERNAL[method]["finetune"] == "full" else None
    if method in FUSION_METHODS:
        return "fusion"
    if settings_of(method).supervised:
        return "end_to_end"
    return None


def run_dir(method, source, seed):
    return f"{RESULTS}/models/{method}/{source}/seed{seed}"


def embed_dir(method, source, seed):
    return f"{RESULTS}/embeddings/{method}/{source}/seed{seed}"


def embed_manifest_path(method, source, seed):
    return f"{embed_dir(method, source, seed)}/manifest.csv"


# Test stores are scored one job per (method, store) by rule predict_store; every run of the method
# embeds the store and its variants and predicts, so a new test slide costs only its own jobs.
# "by_store" cannot be a source id (SOURCES: center names, each/all/loco ids; checked below).
BY_STORE = "by_store"


def store_embed_dir(method, store):
    """HDF5 embeddings of one test store and its variants, one subfolder per run ({source}/seed{k})."""
    return f"{RESULTS}/embeddings/{method}/{BY_STORE}/{store}"


def store_embed_manifest_path(method, store):
    return f"{RESULTS}/embeddings/{method}/{BY_STORE}/{store}.csv"


def store_prediction_path(method, store):
    """Predictions of every run (source x seed) of the method on one test store and its variants."""
    return f"{RESULTS}/predictions/{method}/{store}.csv"


def train_summary_path(method, source, seed):
    return f"{run_dir(method, source, seed)}/train_summary.json"


def tile_store(store):
    """The patch store of a store id (what scripts open; pass it as a param)."""
    return f"{RESULTS}/tiles/{store}.zarr"


def tile_manifest(store):
    """The store's completion manifest (stainshift.store.manifest_path): what rules declare as the
    tile stage's output and take as input, so a store is only "done" once complete, and Snakemake
    never deletes a store before re-making it."""
    return f"{RESULTS}/tiles/{store}.json"


def source_stores(source, split):
    """Store ids of one split of the source's centers (what its models may learn from)."""
    return [s for c in SOURCES[source].centers for s in stores_where(split=split, center=c)]


def variant_store_list():
    """(store, stain_method, target) of every normalized variant store, from rules/normalize.smk's
    `variant_stores()` (include it before this file); empty when the normalize stage is absent."""
    func = globals().get("variant_stores")
    return list(func()) if callable(func) else []


def embed_store_ids(source):
    """Stores a run's embed_run job embeds: the source's train and val stores (the probe and its model
    selection). Test stores are embedded per store (rule predict_store)."""
    return list(dict.fromkeys(source_stores(source, TRAIN_SPLIT) + source_stores(source, VAL_SPLIT)))


def store_variants(store):
    """(stain_method, target) of every normalized variant of one store."""
    return [(m, t) for s, m, t in variant_store_list() if s == store]


def run_meta(wildcards):
    """Provenance a run's files carry: method, source (id, kind, centers), seed."""
    src = SOURCES[wildcards.source]
    return {
        "method": wildcards.method,
        "source": src.id,
        "source_kind": src.kind,
        "centers": join_centers(src.centers),
        "seed": int(wildcards.seed),
    }


def method_run_metas(method):
    """run_meta of every run of a method, in METHOD_RUNS order."""
    return [run_meta(SimpleNamespace(method=method, source=s, seed=str(k))) for s, k in METHOD_RUNS[method]]


def pretrain_config_json(wildcards):
    from stainshift.train.config import method_config

    cfg = method_config(config["pretrain"], wildcards.method)
    cfg["seed"] = int(wildcards.seed)
    return json.dumps(cfg, sort_keys=True)


def train_targets():
    return [store_prediction_path(m, s) for m in METHODS for s in TEST_STORE_IDS]


RUN_CONSTRAINTS = {"method": _alternatives(METHODS), "source": _alternatives(list(SOURCES)), "seed": r"\d+"}
TRAINED_RUN_CONSTRAINTS = {**RUN_CONSTRAINTS, "method": _alternatives(TRAINED_METHODS)}
EXTERNAL_RUN_CONSTRAINTS = {**RUN_CONSTRAINTS, "method": _alternatives(list(EXTERNAL))}


def stain_transfer_model(target):
    """The stain-transfer CNN of a `neural` normalization target (rule train_stain_transfer, rules/normalize.smk)."""
    return f"{RESULTS}/normalize/stain_transfer/{target}.pt"


# --- Seed 004's nuclei stages (rules/nuclei.smk): config checks at parse time, input functions ----------
NUC = config["nuclei"]
NUC_DIR = f"{RESULTS}/nuclei"
NUC_DATASETS = list(NUC.get("datasets") or [])
NUC_SEG_NORMS = list(NUC["segmentation"]["normalizations"])
NUC_CLASS_NORM = NUC["classes"]["normalization"]
NUC_NORMS = NUC_SEG_NORMS + [n for n in [NUC_CLASS_NORM] if n not in NUC_SEG_NORMS]
# synthetic nuclei fields: the configured centers, else the study's synthetic centers (the training center first)
NUC_SYNTH_CENTERS = list(NUC["synthetic"].get("centers") or [c for c in CENTERS if c in SYNTH_CENTERS])
if "synthetic" in NUC_DATASETS and not NUC["synthetic"].get("centers") and not NUC_SYNTH_CENTERS:
    # the default (the study's synthetic centers) on a study without any, e.g. a real-data example
    print(
        "note: nuclei dataset 'synthetic' skipped: this study has no synthetic centers "
        "(nuclei.datasets: [hgsc] runs seed 004 on the real nuclei crops)",
        file=sys.stderr,
    )
    NUC_DATASETS = [d for d in NUC_DATASETS if d != "synthetic"]
if "synthetic" in NUC_DATASETS:
    _bad = [c for c in NUC_SYNTH_CENTERS if c not in SYNTH_CENTERS]
    if _bad or not NUC_SYNTH_CENTERS:
        raise ValueError(
            f"config nuclei.synthetic.centers: {_bad or 'none'} — synthetic nuclei fields need synthetic centers "
            f"({', '.join(sorted(SYNTH_CENTERS))})"
        )
    _tc = NUC["synthetic"].get("train_center")
    if _tc is not None and _tc not in NUC_SYNTH_CENTERS:
        raise ValueError(f"config nuclei.synthetic.train_center: {_tc!r} is not one of {NUC_SYNTH_CENTERS}")
NUC_ENCODER = NUC["classes"]["encoder"]
if NUC_DATASETS and NUC_ENCODER != "random" and NUC_ENCODER not in METHODS:
    raise ValueError(
        f"config nuclei.classes.encoder: {NUC_ENCODER!r} is neither 'random' nor a method of this config "
        f"({', '.join(METHODS)})"
    )
if "hgsc" in NUC_DATASETS and not Path(NUC["hgsc"]["path"]).is_dir():
    raise ValueError(
        f"config nuclei.hgsc.path: {NUC['hgsc']['path']!r} is not a folder (nuclei_hgsc of ../shared/data); "
        "drop 'hgsc' from nuclei.datasets or point the path at it"
    )


def nuclei_train_center(dataset):
    """The center whose train fields the dataset's models learn from."""
    if dataset == "hgsc":
        return "hgsc"
    return NUC["synthetic"].get("train_center") or NUC_SYNTH_CENTERS[0]


def nuclei_encoder(wildcards):
    """The encoder.pt whose features feed the k-means baseline (the method's first run), or none."""
    if NUC_ENCODER == "random":
        return []
    return [f"{run_dir(NUC_ENCODER, next(iter(SOURCES)), SEEDS[0])}/encoder.pt"]


def nuclei_targets():
    out = []
    for d in NUC_DATASETS:
        out += [
            f"{NUC_DIR}/{d}/segmentation.csv",
            f"{NUC_DIR}/{d}/segmentation.png",
            f"{NUC_DIR}/{d}/transfer_scores.csv",
            f"{NUC_DIR}/{d}/classes/scores.csv",
        ]
    return out
