"""Snakemake adapter for `normalize_store` (one store -> all its variant stores) and `normalize_montage`."""
import logging

from stainshift.joblog import job_logging, job_name
from stainshift.stain.targets import load_target, read_targets
from stainshift.stain.variants import montage, normalize_store, sample_tiles, write_png_atomic
from stainshift.store import write_manifest

sm = snakemake  # noqa: F821
job_logging(sm.log[0], job_name(sm.rule, sm.wildcards))
log = logging.getLogger("normalize")

try:
    targets = {t["id"]: t for t in read_targets(sm.input.targets)}
    if sm.rule == "normalize_montage":
        entry = targets[sm.wildcards.target]
        tiles, sources = sample_tiles(list(sm.params.stores), int(sm.params.n_tiles), seed=int(sm.params.seed),
                                      with_sources=True)
        # `neural` is a CNN trained per target: its row shows only on the montage of a neural target
        models = {"neural": sm.input.model[0]} if sm.input.model else {}
        methods = [m for m in sm.params.methods if m != "neural" or models]
        img, flags = montage(tiles, load_target(entry), methods, sources=sources, target_entry=entry, models=models)
        write_png_atomic(sm.output.montage, img)
        log.info("montage %s: %d tiles, fallback flags %s", entry["id"], len(tiles),
                 {m: f.tolist() for m, f in flags.items()})
    else:
        plan = [tuple(p) for p in sm.params.plan]
        entries = []
        for tid, method in plan:
            if tid not in targets or targets[tid]["method"] != method:
                raise ValueError(f"{sm.input.targets}: target {tid!r} ({method}) missing or changed; rerun select_targets")
            entries.append(targets[tid])
        out_paths = {tid: path for (tid, _), path in zip(plan, sm.params.variants)}
        models = dict(zip(sm.params.neural_targets, sm.input.models))
        fallbacks = normalize_store(sm.params.store, entries, out_paths, batch_size=int(sm.params.batch_size),
                                    models=models)
        for path in out_paths.values():
            write_manifest(path)  # last: the variant store is complete
        log.info("fallback tiles per target: %s", fallbacks)
except Exception:
    log.error("%s failed", sm.rule)
    raise
