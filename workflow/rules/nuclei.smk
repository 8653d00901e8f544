# Seed 004 (issue 14): neural stain transfer -> U-Net nuclei segmentation across centers -> unsupervised
# nucleus classes (InfoGAN vs k-means), per dataset of nuclei.datasets (stainshift.nuclei.experiment):
#   nuclei_fields          -> {N}/{dataset}/fields.npz                  fields + instance/type masks, center, split
#   nuclei_stain_transfer  -> {N}/{dataset}/stain_transfer.pt           the CNN for the train center's style (GPU stage)
#   nuclei_normalize       -> {N}/{dataset}/normalized/{norm}.npz       every field under each normalization,
#                             transfer_scores.csv (L2 / hist. correlation / Hellinger, glass coloured), montage
#   nuclei_segment         -> {N}/{dataset}/segmentation/{norm}.csv     U-Net + threshold baseline per test field (GPU stage)
#   nuclei_segment_summary -> {N}/{dataset}/segmentation.csv, .png      pooled table (seen / unseen centers), overlays
#   nuclei_crops           -> {N}/{dataset}/crops/{train,test}.zarr     40 px nucleus crops (patch stores; the
#                             declared outputs are their manifests .json, as for tile stores) + .csv tables
#   nuclei_classes         -> {N}/{dataset}/classes/scores.csv, .png    InfoGAN vs k-means, Hungarian-matched (GPU stage)
# Config checks, NUC_* constants and input functions: rules/common.smk (the nuclei section).


rule nuclei_fields:
    output:
        fields=f"{NUC_DIR}/{{dataset}}/fields.npz",
    log:
        log_path("nuclei", "fields_{dataset}"),
    benchmark:
        bench_path("nuclei", "fields_{dataset}")
    wildcard_constraints:
        dataset=_alternatives(NUC_DATASETS) if NUC_DATASETS else "__none__",
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("normalize"),
    params:
        cfg=NUC,
        centers=NUC_SYNTH_CENTERS,
    script:
        "../scripts/nuclei.py"


rule nuclei_stain_transfer:
    input:
        fields=f"{NUC_DIR}/{{dataset}}/fields.npz",
    output:
        model=f"{NUC_DIR}/{{dataset}}/stain_transfer.pt",
        history=f"{NUC_DIR}/{{dataset}}/stain_transfer.csv",
    log:
        log_path("nuclei", "stain_transfer_{dataset}"),
    benchmark:
        bench_path("nuclei", "stain_transfer_{dataset}")
    conda:
        ENV_GPU
    threads: stage_threads("stain_transfer")
    resources:
        **stage_resources("stain_transfer"),
    params:
        cfg=NUC,
        stain_transfer=config["stain_transfer"],
    script:
        "../scripts/nuclei.py"


rule nuclei_normalize:
    input:
        **({"model": f"{NUC_DIR}/{{dataset}}/stain_transfer.pt"} if "neural" in NUC_NORMS else {}),
        fields=f"{NUC_DIR}/{{dataset}}/fields.npz",
    output:
        normalized=[f"{NUC_DIR}/{{dataset}}/normalized/{n}.npz" for n in NUC_NORMS],
        scores=f"{NUC_DIR}/{{dataset}}/transfer_scores.csv",
        montage=report(
            f"{NUC_DIR}/{{dataset}}/transfer_montage.png",
            category="Nuclei (seed 004)",
            labels={"dataset": "{dataset}", "figure": "stain transfer montage"},
        ),
    log:
        log_path("nuclei", "normalize_{dataset}"),
    benchmark:
        bench_path("nuclei", "normalize_{dataset}")
    conda:
        ENV_CPU
    threads: stage_threads("normalize")
    resources:
        **stage_resources("normalize"),
    params:
        cfg=NUC,
        normalizations=NUC_NORMS,
    script:
        "../scripts/nuclei.py"


rule nuclei_segment:
    input:
        fields=f"{NUC_DIR}/{{dataset}}/normalized/{{norm}}.npz",
    output:
        rows=f"{NUC_DIR}/{{dataset}}/segmentation/{{norm}}.csv",
        model=f"{NUC_DIR}/{{dataset}}/segmentation/{{norm}}_unet.pt",
        history=f"{NUC_DIR}/{{dataset}}/segmentation/{{norm}}_history.csv",
    log:
        log_path("nuclei", "segment_{dataset}_{norm}"),
    benchmark:
        bench_path("nuclei", "segment_{dataset}_{norm}")
    wildcard_constraints:
        norm=_alternatives(NUC_SEG_NORMS),
    conda:
        ENV_GPU
    threads: stage_threads("nuclei")
    resources:
        **stage_resources("nuclei"),
    params:
        cfg=NUC,
    script:
        "../scripts/nuclei.py"


rule nuclei_segment_summary:
    input:
        rows=[f"{NUC_DIR}/{{dataset}}/segmentation/{n}.csv" for n in NUC_SEG_NORMS],
        models=[f"{NUC_DIR}/{{dataset}}/segmentation/{n}_unet.pt" for n in NUC_SEG_NORMS],
        fields=[f"{NUC_DIR}/{{dataset}}/normalized/{n}.npz" for n in NUC_SEG_NORMS],
    output:
        table=report(
            f"{NUC_DIR}/{{dataset}}/segmentation.csv",
            category="Nuclei (seed 004)",
            labels={"dataset": "{dataset}", "table": "segmentation"},
        ),
        figure=report(
            f"{NUC_DIR}/{{dataset}}/segmentation.png",
            category="Nuclei (seed 004)",
            labels={"dataset": "{dataset}", "figure": "segmentation overlays"},
        ),
    log:
        log_path("nuclei", "segment_summary_{dataset}"),
    benchmark:
        bench_path("nuclei", "segment_summary_{dataset}")
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("evaluate"),
    params:
        cfg=NUC,
        bootstrap=config["evaluate"]["bootstrap"],
        seed=config["evaluate"]["seed"],
    script:
        "../scripts/nuclei.py"


rule nuclei_crops:
    input:
        fields=f"{NUC_DIR}/{{dataset}}/normalized/{NUC_CLASS_NORM}.npz",
    output:
        train=f"{NUC_DIR}/{{dataset}}/crops/train.json",  # the stores' manifests (written last), as for tile stores
        test=f"{NUC_DIR}/{{dataset}}/crops/test.json",
        train_table=f"{NUC_DIR}/{{dataset}}/crops/train.csv",
        test_table=f"{NUC_DIR}/{{dataset}}/crops/test.csv",
    log:
        log_path("nuclei", "crops_{dataset}"),
    benchmark:
        bench_path("nuclei", "crops_{dataset}")
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("normalize"),
    params:
        cfg=NUC,
    script:
        "../scripts/nuclei.py"


rule nuclei_classes:
    input:
        train=f"{NUC_DIR}/{{dataset}}/crops/train.json",
        test=f"{NUC_DIR}/{{dataset}}/crops/test.json",
        encoder=nuclei_encoder,
    output:
        scores=report(
            f"{NUC_DIR}/{{dataset}}/classes/scores.csv",
            category="Nuclei (seed 004)",
            labels={"dataset": "{dataset}", "table": "nucleus classes"},
        ),
        assignments=f"{NUC_DIR}/{{dataset}}/classes/assignments.csv",
        samples=report(
            f"{NUC_DIR}/{{dataset}}/classes/samples.png",
            category="Nuclei (seed 004)",
            labels={"dataset": "{dataset}", "figure": "InfoGAN samples per code"},
        ),
        model=f"{NUC_DIR}/{{dataset}}/classes/infogan.pt",
    log:
        log_path("nuclei", "classes_{dataset}"),
    benchmark:
        bench_path("nuclei", "classes_{dataset}")
    conda:
        ENV_GPU
    threads: stage_threads("nuclei")
    resources:
        **stage_resources("nuclei"),
    params:
        cfg=NUC,
    script:
        "../scripts/nuclei.py"


TARGET_FUNCS.append(nuclei_targets)
