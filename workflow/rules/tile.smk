# Tile stage (stainshift.tiling / stainshift.store / stainshift.cropsets):
#   tile          one job per slide of the sample sheet -> {R}/tiles/{slide}.zarr + {R}/qc/{slide}.png
#   import_crops  one job per crop store (config `crops:`) -> {R}/tiles/{set}-{domain}-{split}.zarr
# params carry the whole tiling / crop-set config, so changing it re-runs exactly these jobs and
# what depends on their stores.
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
        **stage_resources("tile"),
    conda:
        ENV_CPU
    script:
        "../scripts/tile.py"


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
        **stage_resources("tile"),
    conda:
        ENV_CPU
    script:
        "../scripts/import_crops.py"


TARGET_FUNCS.append(tile_targets)
