# Cross-center evaluation over runs (stainshift.metrics): one `evaluate_method` job per method reads every run
# (source x replicate seed) of that method -- predictions, embeddings, training summary -- and writes
# tidy long CSVs + figures; one `summarize` job puts all methods side by side and runs the seed-paired
# comparisons against evaluate.reference. Uses from common.smk: METHODS, SOURCES, RUNS, METHOD_RUNS,
# TEST_STORE_IDS, store_prediction_path, store_embed_manifest_path, train_summary_path.

METRICS_DIR = f"{RESULTS}/metrics"
PLOTS_DIR = f"{RESULTS}/plots"
EVAL_TABLES = ["cross_center", "variants", "restain", "batch_effect", "learning"]
SOURCE_DICTS = {sid: src.as_dict() for sid, src in SOURCES.items()}


rule evaluate_method:
    input:
        predictions=lambda wc: [store_prediction_path(wc.method, s) for s in TEST_STORE_IDS],
        manifests=lambda wc: [store_embed_manifest_path(wc.method, s) for s in TEST_STORE_IDS],
        summaries=lambda wc: [train_summary_path(wc.method, s, k) for s, k in METHOD_RUNS[wc.method]],
    output:
        **{
            name: report(
                f"{METRICS_DIR}/{{method}}/{name}.csv",
                caption=f"../report/{name}_csv.rst",
                category="Tables",
                subcategory="{method}",
                labels={"method": "{method}", "table": name.replace("_", " ")},
            )
            for name in EVAL_TABLES
        },
        heatmap=report(
            f"{PLOTS_DIR}/{{method}}/cross_center_heatmap.png",
            caption="../report/heatmap.rst",
            category="Cross-center",
            subcategory="heatmaps",
            labels={"method": "{method}", "figure": "heatmap"},
        ),
        roc=report(
            f"{PLOTS_DIR}/{{method}}/roc.png",
            caption="../report/roc.rst",
            category="Cross-center",
            subcategory="ROC",
            labels={"method": "{method}", "figure": "ROC"},
        ),
        embedding_map=report(
            f"{PLOTS_DIR}/{{method}}/embedding_map.png",
            caption="../report/embedding_map.rst",
            category="Latent space",
            subcategory="maps",
            labels={"method": "{method}", "figure": "map"},
        ),
    log:
        log_path("evaluate", "{method}"),
    benchmark:
        bench_path("evaluate", "{method}")
    wildcard_constraints:
        method="|".join(METHODS),
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("evaluate"),
    params:
        evaluate=config["evaluate"],
        sources=SOURCE_DICTS,
        runs=lambda wc: [[s, k] for s, k in METHOD_RUNS[wc.method]],
        class_names=CLASS_NAMES,
    script:
        "../scripts/evaluate.py"


rule summarize:
    input:
        **{name: expand(f"{METRICS_DIR}/{{method}}/{name}.csv", method=METHODS) for name in EVAL_TABLES},
        predictions=[store_prediction_path(m, s) for m in METHODS for s in TEST_STORE_IDS],
    output:
        summary=report(
            f"{METRICS_DIR}/summary.csv",
            caption="../report/summary_csv.rst",
            category="Tables",
            subcategory="all methods",
            labels={"table": "summary"},
        ),
        variant_plot=report(
            f"{PLOTS_DIR}/variant_accuracy.png",
            caption="../report/variant_accuracy.rst",
            category="Stain variants",
            labels={"figure": "accuracy across variants"},
        ),
        restain_plot=report(
            f"{PLOTS_DIR}/restain_curve.png",
            caption="../report/restain_curve.rst",
            category="Stain variants",
            labels={"figure": "stain-robustness curve"},
        ),
    log:
        log_path("summarize", "summary"),
    benchmark:
        bench_path("summarize", "summary")
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("evaluate"),
    params:
        evaluate=config["evaluate"],
        methods=METHODS,
        sources=SOURCE_DICTS,
    script:
        "../scripts/summarize.py"


TARGET_FUNCS.append(lambda: [f"{METRICS_DIR}/summary.csv"])
