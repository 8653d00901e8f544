# Tile stage (stainshift.tiling / stainshift.store / stainshift.cropsets):
#   tile_slide    one job per slide of the sample sheet -> {R}/tiles/{slide}.zarr + {R}/qc/{slide}.png
#   import_crops  one job per crop store (config `crops:`) -> {R}/tiles/{set}-{domain}-{split}.zarr
# The declared output of a store is its manifest {R}/tiles/{store}.json (written after the store is
# complete; stainshift.store.write_manifest): Snakemake does not delete a store before re-making it, a
# failed re-run leaves the previous store intact, and a store without its manifest is never "done".
# params carry the whole tiling / crop-set config, so changing it re-runs exactly these jobs and
# what depends on their stores.
rule tile_slide:
    input:
        unpack(tile_inputs),
    output:
        manifest=f"{RESULTS}/tiles/{{slide}}.json",
        qc=f"{RESULTS}/qc/{{slide}}.png",
    log:
        log_path("tile"),
    benchmark:
        bench_path("tile")
    wildcard_constraints:
        slide=_alternatives(SLIDES),
    conda:
        ENV_CPU
    threads: config["tiling"].get("workers", 1)
    resources:
        **stage_resources("tile"),
    params:
        store=lambda wc: tile_store(wc.slide),
        tiling=config["tiling"],
        row=tile_row,
    script:
        "../scripts/tile.py"


rule import_crops:
    output:
        manifest=f"{RESULTS}/tiles/{{store}}.json",
    log:
        log_path("import_crops", "{store}"),
    benchmark:
        bench_path("import_crops", "{store}")
    wildcard_constraints:
        store=_alternatives(CROP_STORE_IDS),
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("tile"),
    params:
        store=lambda wc: tile_store(wc.store),
        entry=crop_store_entry,
        codec={k: config["tiling"].get(k) for k in ("codec", "jpeg_quality")},
    script:
        "../scripts/import_crops.py"


TARGET_FUNCS.append(tile_targets)
