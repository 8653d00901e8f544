# Synthetic multi-center demo slides (stainshift.synth): rows of the sample sheet whose path lies
# under {results}/synth/ are generated here, deterministically from config['synth']['seed'].

from stainshift.synth import CENTERS as SYNTH_CENTERS


def _check_synth_centers():
    """Fail at parse time, naming the rows, when a generated slide asks for an unknown center."""
    if not config["synth"]["enabled"]:
        return
    bad = [
        f"  - slide_id={sid!r}: center {c!r}"
        for sid, p, c in zip(SAMPLES["slide_id"], SAMPLES["path"], SAMPLES["center"])
        if str(p).startswith(SYNTH_DIR + "/") and c not in SYNTH_CENTERS
    ]
    if bad:
        raise ValueError(
            f"sample sheet '{config['samples']}': rows generated under {SYNTH_DIR}/ need a synthetic center "
            f"({', '.join(sorted(SYNTH_CENTERS))}):\n" + "\n".join(bad)
        )


_check_synth_centers()


def synth_slide_params(wildcards):
    row = SAMPLES.loc[wildcards.slide]
    return {"center": row["center"], "slide_id": wildcards.slide, **config["synth"]}


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
        mem_mb=lambda wc: res("synth", "mem_mb"),
        runtime=lambda wc: res("synth", "runtime"),
    threads: 1
    conda:
        ENV_CPU
    script:
        "../scripts/synth.py"


def synth_targets():
    if not config["synth"]["enabled"]:
        return []
    return [p for p in SAMPLES["path"] if str(p).startswith(SYNTH_DIR + "/")]


TARGET_FUNCS.append(synth_targets)
