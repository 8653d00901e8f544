# Training stages (stainshift.train / stainshift.methods / stainshift.embeddings), one job per run
# (method, source, seed) — a source's models learn only from its centers' train/val stores:
#   pretrain_run     -> {R}/models/{m}/{src}/seed{k}/encoder.pt, metrics.csv, train_summary.json
#   import_encoder   -> the same encoder.pt and train_summary.json for an `external` encoder (its file's
#                       spec and sha256, no weights, nothing trained; stainshift.external)
#   embed_run        -> {R}/embeddings/{m}/{src}/seed{k}/stores/… (HDF5 of the source's train/val stores), manifest.csv
#   finetune_run     -> {R}/models/{m}/{src}/seed{k}/heads.pt, finetune.csv: the linear probe on frozen
#                       features (every method) and the method's own seed downstream (end-to-end
#                       classifier of seed 000 / fusion fine-tuning of seed 002), chosen on the
#                       source's val stores
# and one job per (method, test store), so a new test slide is embedded and scored by its own jobs:
#   predict_store    -> {R}/embeddings/{m}/by_store/{store}/{src}/seed{k}/… (HDF5 of the store and each
#                       of its normalized variants, for every run of the method), {store}.csv (their
#                       manifest), {R}/predictions/{m}/{store}.csv (every head of every run on them;
#                       layout: stainshift.embeddings docstring). On SLURM, batch these small jobs
#                       with --groups / --group-components (docs/cluster.md, "Many small jobs").
RUN = "{method}/{source}/seed{seed}"


rule pretrain_run:
    input:
        stores=lambda wc: [tile_manifest(s) for s in source_stores(wc.source, TRAIN_SPLIT)],
        init=lambda wc: [f for f in [_init_file(wc.method)] if f],
    output:
        encoder=f"{RESULTS}/models/{RUN}/encoder.pt",
        metrics=f"{RESULTS}/models/{RUN}/metrics.csv",
        summary=f"{RESULTS}/models/{RUN}/train_summary.json",
    log:
        log_path("pretrain", RUN),
    benchmark:
        bench_path("pretrain", RUN)
    wildcard_constraints:
        **TRAINED_RUN_CONSTRAINTS,
    conda:
        ENV_GPU
    threads: stage_threads("pretrain")
    resources:
        **stage_resources("pretrain"),
    params:
        cfg=pretrain_config_json,
        stores=lambda wc: [tile_store(s) for s in source_stores(wc.source, TRAIN_SPLIT)],
        meta=lambda wc: json.dumps(run_meta(wc), sort_keys=True),
        on_no_learning=config["pretrain"]["on_no_learning"],
        launcher=lambda wc: torchrun_prefix("pretrain"),
        script=lambda wc: str(Path(workflow.basedir) / "scripts" / "pretrain.py"),
        out_dir=lambda wc, output: str(Path(output.encoder).parent),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} {params.script:q} --method {wildcards.method:q} "
        "--out-dir {params.out_dir:q} --threads {threads} --config-json {params.cfg:q} --meta-json {params.meta:q} "
        "--on-no-learning {params.on_no_learning:q} --stores {params.stores:q} --log-file {log:q}"


rule import_encoder:
    input:
        weights=lambda wc: EXTERNAL[wc.method]["file"],
    output:
        encoder=f"{RESULTS}/models/{RUN}/encoder.pt",
        summary=f"{RESULTS}/models/{RUN}/train_summary.json",
    log:
        log_path("import_encoder", RUN),
    benchmark:
        bench_path("import_encoder", RUN)
    wildcard_constraints:
        **EXTERNAL_RUN_CONSTRAINTS,
    conda:
        ENV_GPU
    threads: 1
    resources:
        **stage_resources("embed"),
    params:
        entry=lambda wc: EXTERNAL[wc.method],
        meta=run_meta,
    script:
        "../scripts/import_encoder.py"


rule embed_run:
    input:
        encoder=f"{RESULTS}/models/{RUN}/encoder.pt",
        stores=lambda wc: [tile_manifest(s) for s in embed_store_ids(wc.source)],
    output:
        stores=directory(f"{RESULTS}/embeddings/{RUN}/stores"),
        manifest=f"{RESULTS}/embeddings/{RUN}/manifest.csv",
    log:
        log_path("embed", RUN),
    benchmark:
        bench_path("embed", RUN)
    wildcard_constraints:
        **RUN_CONSTRAINTS,
    conda:
        ENV_GPU
    threads: stage_threads("embed")
    resources:
        **stage_resources("embed"),
    params:
        cfg=config["embed"],
        meta=run_meta,
        stores=lambda wc: [tile_store(s) for s in embed_store_ids(wc.source)],
    script:
        "../scripts/embed.py"


rule finetune_run:
    input:
        encoder=f"{RESULTS}/models/{RUN}/encoder.pt",
        manifest=f"{RESULTS}/embeddings/{RUN}/manifest.csv",
        train=lambda wc: [tile_manifest(s) for s in source_stores(wc.source, TRAIN_SPLIT)],
        val=lambda wc: [tile_manifest(s) for s in source_stores(wc.source, VAL_SPLIT)],
    output:
        heads=f"{RESULTS}/models/{RUN}/heads.pt",
        metrics=f"{RESULTS}/models/{RUN}/finetune.csv",
    log:
        log_path("finetune", RUN),
    benchmark:
        bench_path("finetune", RUN)
    wildcard_constraints:
        **RUN_CONSTRAINTS,
    conda:
        ENV_GPU
    threads: stage_threads("finetune")
    resources:
        **stage_resources("finetune"),
    params:
        cfg=config["finetune"],
        meta=run_meta,
        downstream=lambda wc: native_downstream(wc.method),
        train_stores=lambda wc: source_stores(wc.source, TRAIN_SPLIT),
        val_stores=lambda wc: source_stores(wc.source, VAL_SPLIT),
        train_paths=lambda wc: [tile_store(s) for s in source_stores(wc.source, TRAIN_SPLIT)],
        val_paths=lambda wc: [tile_store(s) for s in source_stores(wc.source, VAL_SPLIT)],
    script:
        "../scripts/finetune.py"


rule predict_store:
    input:
        encoders=lambda wc: [f"{run_dir(wc.method, s, k)}/encoder.pt" for s, k in METHOD_RUNS[wc.method]],
        heads=lambda wc: [f"{run_dir(wc.method, s, k)}/heads.pt" for s, k in METHOD_RUNS[wc.method]],
        store=f"{RESULTS}/tiles/{{store}}.json",
        variants=lambda wc: [f"{RESULTS}/variants/{wc.store}/{m}/{t}.json" for m, t in store_variants(wc.store)],
    output:
        embeddings=directory(store_embed_dir("{method}", "{store}")),
        manifest=store_embed_manifest_path("{method}", "{store}"),
        predictions=store_prediction_path("{method}", "{store}"),
    log:
        log_path("predict", "{method}/{store}"),
    benchmark:
        bench_path("predict", "{method}/{store}")
    wildcard_constraints:
        method=_alternatives(METHODS),
        store=_alternatives(TEST_STORE_IDS) if TEST_STORE_IDS else "__none__",
    conda:
        ENV_GPU
    threads: stage_threads("embed")
    resources:
        **stage_resources("embed"),
    params:
        cfg=config["embed"],
        runs=lambda wc: method_run_metas(wc.method),
        store=lambda wc: tile_store(wc.store),
        variants=lambda wc: [[m, t, f"{RESULTS}/variants/{wc.store}/{m}/{t}.zarr"] for m, t in store_variants(wc.store)],
        test_split="test",
    script:
        "../scripts/predict_store.py"


TARGET_FUNCS.append(train_targets)
