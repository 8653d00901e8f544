"""Rule `import_encoder`: one run's encoder.pt for a config `external` entry — the file is loaded and
checked (checksum, keys, a test forward pass) and recorded by its spec and sha256; nothing is
trained (stainshift.external.import_encoder)."""

import logging
from pathlib import Path

from stainshift.external import import_encoder

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
import_encoder(dict(smk.params.entry), Path(smk.output.encoder).parent, dict(smk.params.meta))
