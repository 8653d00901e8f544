"""Rule `predict`: class probabilities of one run's heads (probe, and native where the method has
one) on every test store and every normalized variant of a test store.

The probe reads the test embeddings (HDF5 from `embed`); the native classifier re-runs on the
tiles. Every row records which centers the encoder and the head learnt from, so the evaluation can
tell seen from unseen test centers. Writes {R}/predictions/{method}/{source}/seed{seed}.csv
(layout: stainshift.embeddings).
"""

import logging

import numpy as np
import pandas as pd
import torch

from stainshift.cropsets import tile_groups
from stainshift.embeddings import prediction_frame, read_embeddings, write_predictions
from stainshift.store import PatchStore
from stainshift.train import load_head, probabilities, select_device

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("stainshift.predict")
torch.set_num_threads(max(1, smk.threads))
meta = dict(smk.params.meta)
device = select_device(smk.params.cfg.get("device", "auto"))
manifest = pd.read_csv(smk.input.manifest, dtype={"store": str, "center": str, "split": str, "variant_target": str})
tests = manifest[manifest["split"] == smk.params.test_split]
if tests.empty:
    log.warning("no stores of split '%s' in %s: empty predictions", smk.params.test_split, smk.input.manifest)
encoder_centers = meta["centers"]
groups: dict[str, tuple[list[str], list[str]]] = {}
frames = []
for head_path in smk.input.heads:
    mode, module, payload = load_head(head_path, device)
    protocol = payload["protocol"]
    for row in tests.itertuples(index=False):
        emb = read_embeddings(row.path)
        if mode == "linear":
            probs = probabilities(module, emb["features"], device, from_features=True)
        else:
            store = PatchStore.open(row.source)
            probs = probabilities(module, store.read(np.asarray(emb["index"])), device, from_features=False)
        if row.store not in groups:  # per-tile slide and patient (crop sets: the crop's source slide)
            raw_store = PatchStore.open(tests.loc[(tests["store"] == row.store) & (tests["variant_method"] == "raw"),
                                                  "source"].iloc[0])
            groups[row.store] = tile_groups(raw_store.attrs, len(raw_store))
        slides, patients = groups[row.store]
        idx = np.asarray(emb["index"])
        frame = prediction_frame(
            probs, index=idx, label=emb["label"], threshold=float(payload.get("threshold", np.nan)),
            meta={**meta, "protocol": protocol, "encoder_centers": encoder_centers,
                  "head_centers": payload.get("head_centers", encoder_centers), "store": row.store,
                  "slide_id": row.slide_id, "test": row.center, "split": row.split,
                  "variant_method": row.variant_method, "variant_target": row.variant_target})
        frame["slide_id"] = np.asarray(slides, dtype=object)[idx]
        frame["patient"] = np.asarray(patients, dtype=object)[idx]
        frames.append(frame)
    log.info("%s head (%s, %s): %d test stores and variants", protocol, mode, head_path, len(tests))
write_predictions(smk.output[0], frames)
log.info("wrote %s (%d rows)", smk.output[0], sum(len(f) for f in frames))
