# Stain-normalized variants of the test stores (stainshift.stain, issue 4; seed 000's BRACS70):
#   select_targets     -> {R}/normalize/targets.json           k targets, split evenly over the methods
#   normalize_store    -> {R}/variants/{store}/{method}/{target}.zarr   one job per store, all its variants
#                         (declared output: each variant's manifest {target}.json, as for tile stores)
#   restain_store      -> {R}/variants/{store}/restain/s{strength}.zarr   the store re-stained in H&E space at
#                         each normalize.restain strength (the stain-robustness curve; stain.variants.restain_store)
#   normalize_montage  -> {R}/normalize/montage/{target}.png   the same tiles raw and under each method
#   train_stain_transfer -> {R}/normalize/stain_transfer/{target}.pt   seed 004's CNN for each `neural` target,
#                         trained on tiles of the target's own store (its style; stainshift.stain.neural)
# Target ids and methods are fixed by the config alone (stainshift.stain.targets.NormalizePlan), so the
# DAG is static; which tile fills each slot is decided by select_targets (random draw or list).
from stainshift.stain.targets import NormalizePlan

NORM = config["normalize"]
NORM_DIR = f"{RESULTS}/normalize"
NORM_PLAN = NormalizePlan(
    NORM, STORES, RESULTS, training_centers=[c for c in CENTERS if stores_where(split=TRAIN_SPLIT, center=c)]
)
NORM_TARGET_IDS = [t for t, _ in NORM_PLAN.plan]
variant_stores = NORM_PLAN.variant_stores  # (store, method, target) of every variant (rules/train.smk)
NEURAL_TARGETS = [t for t, m in NORM_PLAN.plan if m == "neural"]


rule select_targets:
    input:
        stores=[tile_manifest(c["slide_id"]) for c in NORM_PLAN.candidates()],
    output:
        targets=f"{NORM_DIR}/targets.json",
    log:
        log_path("normalize", "select_targets"),
    benchmark:
        bench_path("normalize", "select_targets")
    conda:
        ENV_CPU
    threads: stage_threads("normalize")
    resources:
        **stage_resources("normalize"),
    params:
        targets=NORM["targets"],
        methods=NORM["methods"],
        plan=NORM_PLAN.plan,
        candidates=NORM_PLAN.candidates(),
    script:
        "../scripts/select_targets.py"


rule train_stain_transfer:
    input:
        stores=[tile_manifest(c["slide_id"]) for c in NORM_PLAN.candidates()],
        targets=f"{NORM_DIR}/targets.json",
    output:
        model=stain_transfer_model("{target}"),
        history=f"{NORM_DIR}/stain_transfer/{{target}}.csv",
    log:
        log_path("stain_transfer", "{target}"),
    benchmark:
        bench_path("stain_transfer", "{target}")
    wildcard_constraints:
        target=_alternatives(NEURAL_TARGETS) if NEURAL_TARGETS else "__none__",
    conda:
        ENV_GPU
    threads: stage_threads("stain_transfer")
    resources:
        **stage_resources("stain_transfer"),
    params:
        cfg=config["stain_transfer"],
    script:
        "../scripts/stain_transfer.py"


rule normalize_store:
    input:
        store=f"{RESULTS}/tiles/{{store}}.json",
        targets=f"{NORM_DIR}/targets.json",
        models=[stain_transfer_model(t) for t in NEURAL_TARGETS],
    output:
        manifests=NORM_PLAN.variant_paths(suffix=".json"),
    log:
        log_path("normalize", "{store}"),
    benchmark:
        bench_path("normalize", "{store}")
    wildcard_constraints:
        store="|".join(NORM_PLAN.store_ids()) or "__none__",
    conda:
        ENV_CPU
    threads: stage_threads("normalize")
    resources:
        **stage_resources("normalize"),
    params:
        store=lambda wc: tile_store(wc.store),
        variants=lambda wc: NORM_PLAN.variant_paths(wc.store),
        plan=NORM_PLAN.plan,
        batch_size=NORM.get("batch_size", 64),
        neural_targets=NEURAL_TARGETS,
    script:
        "../scripts/normalize.py"


rule restain_store:
    input:
        store=f"{RESULTS}/tiles/{{store}}.json",
    output:
        manifests=NORM_PLAN.restain_paths(suffix=".json"),
    log:
        log_path("normalize", "restain_{store}"),
    benchmark:
        bench_path("normalize", "restain_{store}")
    wildcard_constraints:
        store="|".join(NORM_PLAN.store_ids()) if NORM_PLAN.restain_levels() else "__none__",
    conda:
        ENV_CPU
    threads: stage_threads("normalize")
    resources:
        **stage_resources("normalize"),
    params:
        store=lambda wc: tile_store(wc.store),
        variants=lambda wc: NORM_PLAN.restain_paths(wc.store),
        restain=NORM.get("restain") or {},
        batch_size=NORM.get("batch_size", 64),
    script:
        "../scripts/restain.py"


rule normalize_montage:
    input:
        stores=[tile_manifest(s) for s in NORM_PLAN.store_ids()],
        targets=f"{NORM_DIR}/targets.json",
        model=lambda wc: [stain_transfer_model(wc.target)] if wc.target in NEURAL_TARGETS else [],
    output:
        montage=report(
            f"{NORM_DIR}/montage/{{target}}.png",
            category="Stain variants",
            labels={"figure": "montage", "target": "{target}"},
        ),
    log:
        log_path("normalize", "montage_{target}"),
    benchmark:
        bench_path("normalize", "montage_{target}")
    wildcard_constraints:
        target="|".join(NORM_TARGET_IDS),
    conda:
        ENV_CPU
    threads: stage_threads("normalize")
    resources:
        **stage_resources("normalize"),
    params:
        stores=[tile_store(s) for s in NORM_PLAN.store_ids()],
        methods=NORM["methods"],
        n_tiles=NORM.get("montage_tiles", 6),
        seed=NORM["targets"].get("seed", 0),
    script:
        "../scripts/normalize.py"


TARGET_FUNCS.append(NORM_PLAN.final_files)
