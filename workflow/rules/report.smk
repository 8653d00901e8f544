# The standalone summary ({R}/report/summary.md, and the same as summary.html, shown inline by the HTML report). The HTML report is
# `snakemake --report results/report.html`: it collects every output marked with report() (evaluate.smk)
# with the captions in workflow/report/*.rst.


report: "../report/workflow.rst"


rule report:
    input:
        summary=f"{RESULTS}/metrics/summary.csv",
        figures=[f"{RESULTS}/plots/variant_accuracy.png", f"{RESULTS}/plots/restain_curve.png"]
        + expand(
            f"{RESULTS}/plots/{{method}}/{{fig}}.png",
            method=METHODS,
            fig=["cross_center_heatmap", "roc", "embedding_map"],
        )
        + expand(f"{RESULTS}/plots/slides/{{method}}/{{store}}.png", method=METHODS, store=stores_where(split="test")),
        nuclei_transfer=[f"{NUC_DIR}/{d}/transfer_scores.csv" for d in NUC_DATASETS],
        nuclei_segmentation=[f"{NUC_DIR}/{d}/segmentation.csv" for d in NUC_DATASETS],
        nuclei_classes=[f"{NUC_DIR}/{d}/classes/scores.csv" for d in NUC_DATASETS],
        nuclei_figures=[
            f"{NUC_DIR}/{d}/{f}.png"
            for d in NUC_DATASETS
            for f in ("transfer_montage", "segmentation", "classes/samples")
        ],
    output:
        summary_md=report(f"{RESULTS}/report/summary.md", caption="../report/summary_md.rst", category="Summary"),
        summary_html=report(f"{RESULTS}/report/summary.html", caption="../report/summary_md.rst", category="Summary"),
    log:
        log_path("report", "summary"),
    benchmark:
        bench_path("report", "summary")
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("default"),
    params:
        reference=config["evaluate"].get("reference", "baseline"),
        class_names=CLASS_NAMES,
        nuclei_datasets=NUC_DATASETS,
        nuclei_train_centers=[nuclei_train_center(d) for d in NUC_DATASETS],
    script:
        "../scripts/report.py"


TARGET_FUNCS.append(lambda: [f"{RESULTS}/report/summary.md", f"{RESULTS}/report/summary.html"])
