"""Study directories -> tables, efficiency curves and scaling-law fits on one HTML page.

``collect`` (polars: results / curves, with a per-trial fallback mid-run), ``scaling`` (power-law
and Chinchilla fits with bootstrap intervals), ``tables`` (ablation, trials and failed-trials
tables), ``figures`` (plotly), ``build`` (``build_report``, ``compare_reports``). The synthetic
studies the report tests and the calibration suite read are fixtures (``xtra.reports.calibration.synthetic``).
Submodules are imported on demand so ``reports.scaling`` stays light.
"""
