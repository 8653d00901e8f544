# Tile stage (stainshift.tiling / stainshift.store / stainshift.cropsets):
#   tile          one job per slide of the sample sheet -> {R}/tiles/{slide}.zarr + {R}/qc/{slide}.png
#   import_crops  one job per crop store (config `crops:`) -> {R}/tiles/{set}-{domain}-{split}.zarr
# params carry the whole tiling / crop-set config, so changing it re-runs exactly these jobs and
# what depends on their stores.
import re


def _alternatives(ids):
    return "|".join(re.escape(i) for i in ids) if ids else "(?!x)x"


def tile_inputs(wildcards):
    row = SAMPLES.loc[wildcards.slide]
    inputs = {"slide": row["path"]}
    if row.get("annotation"):
        inputs["annotation"] = row["annotation"]
    return inputs


def tile_row(wildcards):
    row = SAMPLES.loc[wildcards.slide]
    return {k: (None if pd.isna(v) else v) for k, v in row.items()} | {"slide_id": wildcards.slide}


rule tile:
    input:
        unpack(tile_inputs),
    output:
        store=directory(f"{RESULTS}/tiles/{{slide}}.zarr"),
        qc=f"{RESULTS}/qc/{{slide}}.png",
    wildcard_constraints:
        slide=_alternatives(SLIDES),
    params:
        tiling=config["tiling"],
        row=tile_row,
    log:
        log_path("tile"),
    benchmark:
        bench_path("tile")
    threads: config["tiling"].get("workers", 1)
    resources:
        mem_mb=lambda wc: res("tile", "mem_mb"),
        runtime=lambda wc: res("tile", "runtime"),
    conda:
        ENV_CPU
    script:
        "../scripts/tile.py"


def crop_store_entry(wildcards):
    return CROP_ENTRIES[STORES.loc[wildcards.store, "set"]]


rule import_crops:
    output:
        store=directory(f"{RESULTS}/tiles/{{store}}.zarr"),
    wildcard_constraints:
        store=_alternatives(CROP_STORE_IDS),
    params:
        entry=crop_store_entry,
        codec={k: config["tiling"].get(k) for k in ("codec", "jpeg_quality")},
    log:
        log_path("import_crops", "{store}"),
    benchmark:
        bench_path("import_crops", "{store}")
    threads: 1
    resources:
        mem_mb=lambda wc: res("tile", "mem_mb"),
        runtime=lambda wc: res("tile", "runtime"),
    conda:
        ENV_CPU
    script:
        "../scripts/import_crops.py"


def tile_targets():
    return [f"{RESULTS}/tiles/{s}.zarr" for s in STORES.index] + [f"{RESULTS}/qc/{s}.png" for s in SLIDES]


TARGET_FUNCS.append(tile_targets)
