"""Study directories -> tables, efficiency curves and scaling-law fits on one HTML page.

``collect`` (polars: results / curves, with a per-trial fallback mid-run), ``scaling`` (power-law
and Chinchilla fits with bootstrap intervals), ``tables`` (ablation, trials and failed-trials
tables), ``figures`` (plotly), ``build`` (``build_report``, ``compare_reports``, ``bench_report``),
``synthetic`` (a study directory with the real schema, for tests and the benchmark).
Submodules are imported on demand so ``reports.scaling`` stays light.
"""
