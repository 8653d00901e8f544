"""Rule `import_encoder`: one run's encoder.pt for a config `external` entry — the file is loaded and
checked (checksum, keys, a test forward pass) and recorded by its spec and sha256; nothing is
trained (stainshift.external.import_encoder)."""

from pathlib import Path

from stainshift.external import import_encoder
from stainshift.joblog import job_logging, job_name

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
job_logging(smk.log[0], job_name(smk.rule, smk.wildcards))
import_encoder(dict(smk.params.entry), Path(smk.output.encoder).parent, dict(smk.params.meta))
