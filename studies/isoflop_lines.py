"""What ``xtra study show`` says of an isoFLOP grid (``xtra.studies.isoflop`` expands it): each line's
compute, sizes and samples, how far its trials lie from it, and whether the grid supports the
extrapolation test. Apart from the expansion because it asks the reports' own estimators
(``xtra.reports.approaches``, ``xtra.reports.extrapolation``), which sit above the study files
(docs/design.md, "Layers").
"""

from __future__ import annotations

import math
from typing import Any

from xtra.costs import flops_per_image
from xtra.studies.isoflop import LINE_AXIS, nominal_budgets


def lines(study: Any) -> list[str]:
    """What ``xtra study show`` says of an isoFLOP grid: each line's compute, sizes, samples and how far
    its trials are from it; then whether the grid supports the extrapolation test. [] for other studies."""
    if not any(a.name == LINE_AXIS and "pretrain.samples" in a.keys for a in study.axes):
        return []
    specs = study.expand()
    if not specs:
        return []
    from xtra.costs import n_params
    from xtra.reports.approaches import group_lines

    flops = [flops_per_image(s.config.model) * s.config.pretrain.samples for s in specs]
    budgets = nominal_budgets(study)
    if budgets:  # each trial on the line of the budget nearest its compute
        index = [min(range(len(budgets)), key=lambda i: abs(math.log(f / budgets[i]))) for f in flops]
    else:  # a resolved study: lines found again from the trials, centred on their geometric mean
        index = group_lines(flops)
    out = []
    for line in sorted(set(index)):
        members = [(s, f) for s, f, i in zip(specs, flops, index) if i == line]
        centre = budgets[line] if budgets else math.exp(sum(math.log(f) for _, f in members) / len(members))
        offs = [f / centre - 1 for _, f in members]
        sizes: dict[int, int] = {}  # samples -> the smallest model trained them (k moves N by its pixel head)
        for s, _ in members:
            d = s.config.pretrain.samples
            sizes[d] = min(sizes.get(d, n_params(s.config.model)), n_params(s.config.model))
        shown = ", ".join(f"N={n / 1e6:.3g}M D={d:,}" for d, n in sorted(sizes.items(), reverse=True))
        out.append(f"isoFLOP line C = {centre:.3g} FLOPs: {len(sizes)} sizes ({shown}); its trials lie within "
                   f"{min(offs):+.2%} to {max(offs):+.2%} of it (samples rounded to whole batches)")
    from xtra.reports.extrapolation import support_lines

    line_k = min(s.config.model.block_size for s in specs)  # one k's grid: the others repeat it
    points = [(n_params(s.config.model), s.config.pretrain.samples) for s in specs
              if s.config.model.block_size == line_k]
    out += support_lines(points)
    return out
