"""report rule: {R}/metrics/summary.csv -> {R}/report/summary.md and summary.html (stainshift.report)."""
import os

from stainshift.metrics.pipeline import read_table
from stainshift.report import write_summary_html, write_summary_markdown

sm = snakemake  # noqa: F821
summary = read_table(sm.input.summary)
out_dir = os.path.dirname(str(sm.output.summary_md))
figures = [os.path.relpath(str(p), out_dir) for p in [*sm.input.figures, *sm.input.nuclei_figures]]
nuclei = ""
if sm.params.nuclei_datasets:
    import pandas as pd

    from stainshift.nuclei.report import nuclei_section

    tables = {d: {"transfer": pd.read_csv(t), "segmentation": pd.read_csv(s), "classes": pd.read_csv(c),
                  "train_center": tc, "figure_dir": os.path.relpath(os.path.dirname(str(t)), out_dir)}
              for d, t, s, c, tc in zip(sm.params.nuclei_datasets, sm.input.nuclei_transfer,
                                        sm.input.nuclei_segmentation, sm.input.nuclei_classes,
                                        sm.params.nuclei_train_centers)}
    nuclei = nuclei_section(tables)
md = write_summary_markdown(summary, sm.output.summary_md, reference=sm.params.reference, figures=figures,
                            class_names=sm.params.class_names, nuclei=nuclei)
write_summary_html(md.read_text(), sm.output.summary_html)
with open(str(sm.log[0]), "w") as fh:
    fh.write(f"summary.md from {len(summary)} rows, {summary['method'].nunique()} methods\n")
