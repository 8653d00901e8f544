# Synthetic multi-center demo slides (stainshift.synth): rows of the sample sheet whose path lies
# under {results}/synth/ are generated here, deterministically from config['synth']['seed'].


rule synth:
    output:
        slide=f"{SYNTH_DIR}/{{slide}}.tiff",
        mask=f"{SYNTH_DIR}/{{slide}}_mask.png",
        xml=f"{SYNTH_DIR}/{{slide}}.xml",
    log:
        log_path("synth"),
    benchmark:
        bench_path("synth")
    conda:
        ENV_CPU
    threads: 1
    resources:
        **stage_resources("synth"),
    params:
        synth=synth_slide_params,
    script:
        "../scripts/synth.py"


TARGET_FUNCS.append(synth_targets)
