"""Rule `predict`: class probabilities of every train-center head on every test store and test variant.

linear heads read the test embeddings (HDF5 from `embed`); full heads re-run the fine-tuned
classifier on the tiles. Writes {R}/predictions/{method}.csv (layout: stainshift.embeddings).
"""

import logging

import numpy as np
import pandas as pd
import torch

from stainshift.embeddings import prediction_frame, read_embeddings, write_predictions
from stainshift.store import PatchStore
from stainshift.train import load_head, probabilities, select_device

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("stainshift.predict")
torch.set_num_threads(max(1, smk.threads))
method = smk.wildcards.method
device = select_device(smk.params.cfg.get("device", "auto"))
manifest = pd.read_csv(smk.input.manifest, dtype={"store": str, "center": str, "split": str, "variant_target": str})
tests = manifest[manifest["split"] == smk.params.test_split]
if tests.empty:
    log.warning("no stores of split '%s' in %s: empty predictions", smk.params.test_split, smk.input.manifest)
frames = []
for center, head_path in zip(smk.params.centers, smk.input.heads):
    mode, module, payload = load_head(head_path, device)
    for row in tests.itertuples(index=False):
        emb = read_embeddings(row.path)
        if mode == "linear":
            probs = probabilities(module, emb["features"], device, from_features=True)
        else:
            store = PatchStore.open(row.source)
            probs = probabilities(module, store.read(np.asarray(emb["index"])), device, from_features=False)
        meta = {"store": row.store, "slide_id": row.slide_id, "test": row.center, "split": row.split,
                "variant_method": row.variant_method, "variant_target": row.variant_target}
        frames.append(prediction_frame(probs, method=method, train=center, meta=meta, index=emb["index"], label=emb["label"]))
    log.info("%s head %s (%s): %d test stores", method, center, mode, len(tests))
write_predictions(smk.output[0], frames)
log.info("wrote %s (%d rows)", smk.output[0], sum(len(f) for f in frames))
