# Stage targets: `snakemake <stage>` runs one stage, and what it needs, for every slide / store / run /
# method of the config. Each is a rule without a job of its own (like `all`): its inputs are the
# outputs of the stage's per-item rules, named <stage>_<item> so the short names stay free:
#
#   snakemake tile        tile_slide (one job per sheet row) + import_crops (one per crop store)
#   snakemake normalize   select_targets, normalize_store (one per test store), normalize_montage
#   snakemake pretrain    pretrain_run (one per run = method x source x seed), import_encoder (externals)
#   snakemake embed       embed_run (one per run: the source's train/val stores)
#   snakemake finetune    finetune_run (one per run: heads)
#   snakemake predict     predict_store (one per method x test store: embeddings + predictions of every run)
#   snakemake evaluate    evaluate_method (one per method) + summarize
#   snakemake slide_view  slide_view_method (one per method: heatmaps on the slide, GeoJSON)
#   snakemake nuclei      nuclei_* (seed 004: fields, stain transfer, segmentation, crops, classes per dataset)
#   snakemake report      report (summary.md; it has no wildcards, so it is its own stage target)
#
# --forcerun / --until take the per-item rule names (`--forcerun pretrain_run`), since these
# target rules have no job to force (README "Running one stage").


rule tile:
    input:
        tile_targets(),


rule normalize:
    input:
        NORM_PLAN.final_files(),


rule pretrain:
    input:
        [f"{run_dir(m, s, k)}/encoder.pt" for m, s, k in RUNS],


rule embed:
    input:
        [embed_manifest_path(m, s, k) for m, s, k in RUNS],


rule finetune:
    input:
        [f"{run_dir(m, s, k)}/heads.pt" for m, s, k in RUNS],


rule predict:
    input:
        [store_prediction_path(m, s) for m in METHODS for s in TEST_STORE_IDS],


rule evaluate:
    input:
        expand(f"{METRICS_DIR}/{{method}}/{{table}}.csv", method=METHODS, table=EVAL_TABLES),
        f"{METRICS_DIR}/summary.csv",


rule slide_view:
    input:
        [f"{RESULTS}/plots/slides/{m}/{s}.png" for m in METHODS for s in TEST_STORES],


rule nuclei:
    input:
        nuclei_targets(),
