# Cross-center evaluation (stainshift.metrics): one `evaluate` job per method reads the method's
# predictions table and embeddings and writes tidy long CSVs + figures; one `summarize` job puts all
# methods side by side and runs the paired tests against evaluate.reference.

EVAL_METHODS = list(config["pretrain"]["methods"])
METRICS_DIR = f"{RESULTS}/metrics"
PLOTS_DIR = f"{RESULTS}/plots"


rule evaluate:
    input:
        predictions=f"{RESULTS}/predictions/{{method}}.csv",
        manifest=f"{RESULTS}/embeddings/{{method}}/manifest.csv",  # every embeddings file of the method
        tiles=lambda wc: [f"{RESULTS}/tiles/{s}.zarr" for s in STORES.index[STORES["split"] == "test"]],  # crop_groups attrs
    output:
        cross_center=report(f"{METRICS_DIR}/{{method}}/cross_center.csv", caption="../report/cross_center_csv.rst",
                            category="Tables", subcategory="{method}", labels={"method": "{method}", "table": "cross-center"}),
        variants=report(f"{METRICS_DIR}/{{method}}/variants.csv", caption="../report/variants_csv.rst",
                        category="Tables", subcategory="{method}", labels={"method": "{method}", "table": "variants"}),
        batch_effect=report(f"{METRICS_DIR}/{{method}}/batch_effect.csv", caption="../report/batch_effect_csv.rst",
                            category="Tables", subcategory="{method}", labels={"method": "{method}", "table": "batch effect"}),
        heatmap=report(f"{PLOTS_DIR}/{{method}}/cross_center_heatmap.png", caption="../report/heatmap.rst",
                       category="Cross-center", subcategory="heatmaps", labels={"method": "{method}", "figure": "heatmap"}),
        roc=report(f"{PLOTS_DIR}/{{method}}/roc.png", caption="../report/roc.rst",
                   category="Cross-center", subcategory="ROC", labels={"method": "{method}", "figure": "ROC"}),
        embedding_map=report(f"{PLOTS_DIR}/{{method}}/embedding_map.png", caption="../report/embedding_map.rst",
                             category="Latent space", subcategory="maps", labels={"method": "{method}", "figure": "map"}),
    params:
        evaluate=config["evaluate"],
    wildcard_constraints:
        method="|".join(EVAL_METHODS),
    log:
        log_path("evaluate", "{method}"),
    benchmark:
        bench_path("evaluate", "{method}")
    threads: 1
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV_CPU
    script:
        "../scripts/evaluate.py"


rule summarize:
    input:
        cross_center=expand(f"{METRICS_DIR}/{{method}}/cross_center.csv", method=EVAL_METHODS),
        variants=expand(f"{METRICS_DIR}/{{method}}/variants.csv", method=EVAL_METHODS),
        batch_effect=expand(f"{METRICS_DIR}/{{method}}/batch_effect.csv", method=EVAL_METHODS),
        predictions=expand(f"{RESULTS}/predictions/{{method}}.csv", method=EVAL_METHODS),
    output:
        summary=report(f"{METRICS_DIR}/summary.csv", caption="../report/summary_csv.rst", category="Tables",
                       subcategory="all methods", labels={"table": "summary"}),
        variant_plot=report(f"{PLOTS_DIR}/variant_accuracy.png", caption="../report/variant_accuracy.rst",
                            category="Stain variants", labels={"figure": "accuracy across variants"}),
    params:
        evaluate=config["evaluate"],
        methods=EVAL_METHODS,
    log:
        log_path("summarize", "summary"),
    benchmark:
        bench_path("summarize", "summary")
    threads: 1
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV_CPU
    script:
        "../scripts/summarize.py"


TARGET_FUNCS.append(lambda: [f"{METRICS_DIR}/summary.csv"])
