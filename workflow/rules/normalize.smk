# Stain-normalized variants of the test stores (stainshift.stain, issue 4; seed 000's BRACS70):
#   select_targets     -> {R}/normalize/targets.json           k targets, split evenly over the methods
#   normalize          -> {R}/variants/{store}/{method}/{target}.zarr   one job per store, all its variants
#   normalize_montage  -> {R}/normalize/montage/{target}.png   the same tiles raw and under each method
# Target ids and methods are fixed by the config alone (stainshift.stain.targets.plan_targets), so the
# DAG is static; which tile fills each slot is decided by select_targets (random draw or list).
from stainshift.stain.targets import plan_targets

NORM = config["normalize"]
NORM_TARGETS = NORM["targets"]
NORM_DIR = f"{RESULTS}/normalize"
if NORM_TARGETS["mode"] == "list" and not NORM_TARGETS.get("paths"):
    raise ValueError("config normalize.targets: mode 'list' needs a non-empty 'paths' list")
NORM_K = len(NORM_TARGETS["paths"]) if NORM_TARGETS["mode"] == "list" else int(NORM_TARGETS["k"])
NORM_PLAN = plan_targets(NORM["methods"], NORM_K)


def normalize_store_ids():
    """Stores that get normalized variants: the tile stores of split normalize.stores."""
    return slides_where(split=NORM["stores"])


def variant_stores():
    """(store, stain_method, target id) of every variant store (read by rules/train.smk)."""
    return [(s, m, t) for s in normalize_store_ids() for t, m in NORM_PLAN]


def target_candidates():
    """Candidate stores of the random draw: the slides of normalize.targets.split."""
    if NORM_TARGETS["mode"] != "random":
        return []
    rows = SAMPLES[SAMPLES["split"] == NORM_TARGETS["split"]]
    return [
        {"path": f"{RESULTS}/tiles/{r.slide_id}.zarr", "slide_id": r.slide_id, "patient": r.patient, "center": r.center}
        for r in rows.itertuples()
    ]


rule select_targets:
    input:
        stores=[c["path"] for c in target_candidates()],
    output:
        targets=f"{NORM_DIR}/targets.json",
    params:
        targets=NORM_TARGETS,
        methods=NORM["methods"],
        plan=NORM_PLAN,
        candidates=target_candidates(),
    log:
        log_path("normalize", "select_targets"),
    benchmark:
        bench_path("normalize", "select_targets")
    threads: 1
    resources:
        mem_mb=lambda wc: res("normalize", "mem_mb"),
        runtime=lambda wc: res("normalize", "runtime"),
    conda:
        ENV_CPU
    script:
        "../scripts/select_targets.py"


rule normalize:
    input:
        store=f"{RESULTS}/tiles/{{store}}.zarr",
        targets=f"{NORM_DIR}/targets.json",
    output:
        variants=directory([f"{RESULTS}/variants/{{store}}/{m}/{t}.zarr" for t, m in NORM_PLAN]),
    params:
        plan=NORM_PLAN,
        batch_size=NORM.get("batch_size", 64),
    wildcard_constraints:
        store="|".join(normalize_store_ids()) or "__none__",
    log:
        log_path("normalize", "{store}"),
    benchmark:
        bench_path("normalize", "{store}")
    threads: 1
    resources:
        mem_mb=lambda wc: res("normalize", "mem_mb"),
        runtime=lambda wc: res("normalize", "runtime"),
    conda:
        ENV_CPU
    script:
        "../scripts/normalize.py"


rule normalize_montage:
    input:
        stores=[f"{RESULTS}/tiles/{s}.zarr" for s in normalize_store_ids()],
        targets=f"{NORM_DIR}/targets.json",
    output:
        montage=report(f"{NORM_DIR}/montage/{{target}}.png", category="Stain variants",
                       labels={"figure": "montage", "target": "{target}"}),
    params:
        methods=NORM["methods"],
        n_tiles=NORM.get("montage_tiles", 6),
        seed=NORM_TARGETS.get("seed", 0),
    wildcard_constraints:
        target="|".join(t for t, _ in NORM_PLAN),
    log:
        log_path("normalize", "montage_{target}"),
    benchmark:
        bench_path("normalize", "montage_{target}")
    threads: 1
    resources:
        mem_mb=lambda wc: res("normalize", "mem_mb"),
        runtime=lambda wc: res("normalize", "runtime"),
    conda:
        ENV_CPU
    script:
        "../scripts/normalize.py"


def normalize_targets():
    out = [f"{RESULTS}/variants/{s}/{m}/{t}.zarr" for s, m, t in variant_stores()]
    if normalize_store_ids():
        out += [f"{NORM_DIR}/montage/{t}.png" for t, _ in NORM_PLAN]
    return out


TARGET_FUNCS.append(normalize_targets)
