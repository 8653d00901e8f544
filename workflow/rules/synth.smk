# Synthetic multi-center demo slides (stainshift.synth): rows of the sample sheet whose path lies
# under {results}/synth/ are generated here, deterministically from config['synth']['seed'].

rule synth:
    output:
        slide=f"{SYNTH_DIR}/{{slide}}.tiff",
        mask=f"{SYNTH_DIR}/{{slide}}_mask.png",
        xml=f"{SYNTH_DIR}/{{slide}}.xml",
    params:
        synth=synth_slide_params,
    log:
        log_path("synth"),
    benchmark:
        bench_path("synth")
    resources:
        **stage_resources("synth"),
    threads: 1
    conda:
        ENV_CPU
    script:
        "../scripts/synth.py"


TARGET_FUNCS.append(synth_targets)
