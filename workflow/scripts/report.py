"""report rule: {R}/metrics/summary.csv -> {R}/report/summary.md and summary.html (stainshift.report)."""
import os

from stainshift.metrics.pipeline import read_table
from stainshift.report import write_summary_html, write_summary_markdown

sm = snakemake  # noqa: F821
summary = read_table(sm.input.summary)
out_dir = os.path.dirname(str(sm.output.summary_md))
figures = [os.path.relpath(str(p), out_dir) for p in sm.input.figures]
md = write_summary_markdown(summary, sm.output.summary_md, reference=sm.params.reference, figures=figures,
                            class_names=sm.params.class_names)
write_summary_html(md.read_text(), sm.output.summary_html)
with open(str(sm.log[0]), "w") as fh:
    fh.write(f"summary.md from {len(summary)} rows, {summary['method'].nunique()} methods\n")
