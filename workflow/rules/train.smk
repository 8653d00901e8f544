# Training stages (stainshift.train / stainshift.methods / stainshift.embeddings):
#   pretrain  one job per method  -> {R}/models/{method}/encoder.pt, metrics.csv (+ checkpoints/ for resume)
#   embed     one job per method  -> {R}/embeddings/{method}/{store}.h5 for every tile store,
#                                    {R}/embeddings/{method}/variants/{store}/{stain}/{target}.h5, manifest.csv
#   finetune  one job per method  -> {R}/models/{method}/{train_center}/head.pt for every train center (+ "all")
#   predict   one job per method  -> {R}/predictions/{method}.csv (layout: stainshift.embeddings docstring)
rule pretrain:
    input:
        stores=lambda wc: [tile_store(s) for s in stores_where(split=config["pretrain"].get("train_split", "train"))],
    output:
        encoder=f"{RESULTS}/models/{{method}}/encoder.pt",
        metrics=f"{RESULTS}/models/{{method}}/metrics.csv",
    params:
        cfg=pretrain_config_json,
        launcher=lambda wc: torchrun_prefix("pretrain"),
        script=lambda wc: str(Path(workflow.basedir) / "scripts" / "pretrain.py"),
        out_dir=lambda wc, output: str(Path(output.encoder).parent),
    log:
        log_path("pretrain", "{method}"),
    benchmark:
        bench_path("pretrain", "{method}")
    threads: stage_threads("pretrain")
    resources:
        **stage_resources("pretrain"),
    conda:
        ENV_GPU
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} {params.script} --method {wildcards.method} "
        "--out-dir {params.out_dir} --threads {threads} --config-json {params.cfg} --stores {input.stores} "
        "> {log} 2>&1"


rule embed:
    input:
        encoder=f"{RESULTS}/models/{{method}}/encoder.pt",
        stores=[tile_store(s) for s in STORE_IDS],
        variants=variant_store_paths,
    output:
        raw=[f"{RESULTS}/embeddings/{{method}}/{s}.h5" for s in STORE_IDS],
        variants=[f"{RESULTS}/embeddings/{{method}}/variants/{s}/{m}/{t}.h5" for s, m, t in variant_store_list()],
        manifest=f"{RESULTS}/embeddings/{{method}}/manifest.csv",
    params:
        cfg=lambda wc: config["embed"],
        results=lambda wc, output: str(Path(output.manifest).parents[2]),  # {results}/embeddings/{method}/
        variant_list=lambda wc: [list(v) for v in variant_store_list()],
    log:
        log_path("embed", "{method}"),
    benchmark:
        bench_path("embed", "{method}")
    threads: stage_threads("embed")
    resources:
        **stage_resources("embed"),
    conda:
        ENV_GPU
    script:
        "../scripts/embed.py"


rule finetune:
    input:
        encoder=f"{RESULTS}/models/{{method}}/encoder.pt",
        embeddings=f"{RESULTS}/embeddings/{{method}}/manifest.csv",
        stores=[tile_store(s) for s in STORE_IDS],
    output:
        heads=[f"{RESULTS}/models/{{method}}/{c}/head.pt" for c in train_centers()],
        metrics=f"{RESULTS}/models/{{method}}/finetune_metrics.csv",
    params:
        cfg=lambda wc: config["finetune"],
        centers=train_centers(),
    log:
        log_path("finetune", "{method}"),
    benchmark:
        bench_path("finetune", "{method}")
    threads: stage_threads("finetune")
    resources:
        **stage_resources("finetune"),
    conda:
        ENV_GPU
    script:
        "../scripts/finetune.py"


rule predict:
    input:
        heads=[f"{RESULTS}/models/{{method}}/{c}/head.pt" for c in train_centers()],
        manifest=f"{RESULTS}/embeddings/{{method}}/manifest.csv",
    output:
        f"{RESULTS}/predictions/{{method}}.csv",
    params:
        centers=train_centers(),
        test_split="test",
        cfg=lambda wc: config["embed"],
    log:
        log_path("predict", "{method}"),
    benchmark:
        bench_path("predict", "{method}")
    threads: stage_threads("embed")
    resources:
        **stage_resources("embed"),
    conda:
        ENV_GPU
    script:
        "../scripts/predict.py"


TARGET_FUNCS.append(train_targets)
