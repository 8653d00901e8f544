# Predictions back on the slide (issue 19; stainshift.slide_view, stainshift.export):
#   slide_view_method  one job per method, over every test store:
#               {R}/plots/slides/{method}/{store}.png -- slides: thumbnail + annotation + tile labels | mean
#               P(positive) | share of sources correct | per-source maps; crop stores: crops ordered by score
#               (marked for the HTML report);
#               {R}/export/{method}/{store}.geojson per test slide -- the kept tiles in level-0 pixels with label,
#               scores and QuPath classification (File > Import objects).
# Scores: protocol probe, the first replicate seed, the mean over the sources that never saw the store's center
# (all sources, said in the title, where every source saw it). Uses from common.smk: RESULTS, RUNS, METHODS,
# STORES, TEST_STORE_IDS, store_prediction_path, log_path, bench_path, stage_resources, stage_threads, ENV_CPU,
# TARGET_FUNCS, _alternatives.

SLIDE_VIEW = {"protocol": "probe", "seed": RUNS[0][2] if RUNS else 0, "class_names": CLASS_NAMES}
TEST_STORES = TEST_STORE_IDS
TEST_SLIDES = [s for s in TEST_STORES if STORES.loc[s, "kind"] == "slide"]

# per method: its prediction CSVs of every test store (every run; the view keeps SLIDE_VIEW's seed)
SLIDE_VIEW_PREDICTIONS = {method: [store_prediction_path(method, s) for s in TEST_STORES] for method in METHODS}


rule slide_view_method:
    input:
        stores=[tile_manifest(s) for s in TEST_STORES],
        predictions=lambda wc: SLIDE_VIEW_PREDICTIONS[wc.method],
    output:
        pngs=[
            report(
                f"{RESULTS}/plots/slides/{{method}}/{s}.png",
                caption="../report/slide_heatmap.rst",
                category="Slides",
                subcategory="{method}",
                labels={"method": "{method}", "store": s},
            )
            for s in TEST_STORES
        ],
        geojson=[f"{RESULTS}/export/{{method}}/{s}.geojson" for s in TEST_SLIDES],
    log:
        log_path("slide_view", "{method}"),
    benchmark:
        bench_path("slide_view", "{method}")
    wildcard_constraints:
        method=_alternatives(METHODS),
    conda:
        ENV_CPU
    threads: stage_threads("slide_view")
    resources:
        **stage_resources("slide_view"),
    params:
        view=SLIDE_VIEW,
        stores=TEST_STORES,
        store_paths=[tile_store(s) for s in TEST_STORES],
        slides=TEST_SLIDES,
    script:
        "../scripts/slide_view.py"


TARGET_FUNCS.append(
    lambda: [f"{RESULTS}/plots/slides/{m}/{s}.png" for m in METHODS for s in TEST_STORES]
    + [f"{RESULTS}/export/{m}/{s}.geojson" for m in METHODS for s in TEST_SLIDES]
)
