"""Scaling-law fits, and the checks that decide whether a fit is a law.

Every form is fitted the Chinchilla "approach 3" way (Hoffmann et al. 2022, Sec. 3.3 and App. D.2): a
Huber loss (delta 1e-3) between ``log L`` and the form's log prediction, computed with log-sum-exp
so no term under- or overflows, minimised with L-BFGS-B from the best points of a grid of starts.
Intervals (``linearised``): the least-squares fit of the same form, started from the Huber fit,
linearised at its optimum, t with runs - parameters degrees of freedom; derived quantities take
percentiles over t-calibrated Gaussian draws of the parameters (coverage: docs/calibration-cpu.md).
Cross-validation refits start from their own fold's grid only: the full fit has seen the held-out points.

Internally the inputs are divided by their geometric means, so one grid of starting points suits
losses of any scale and x in any unit (samples seen, parameters, FLOPs); the parameters reported are
in the caller's units.

    L(x)    = E + A * x**-alpha                          fit_power_law(x, y)
    L(N, D) = E + A / N**alpha + B / D**beta             fit_chinchilla(N, D, L)

A fit alone is not a law. The critiques of the Chinchilla fits (Besiroglu et al. 2024: intervals far
too narrow for the data, a fit that does not describe its own points) set the checks made here:

* ``Diagnostics``: parameters at or near a bound of the optimiser (or a term too small to matter,
  which the data cannot pin down), parameters at or beyond a bound in many of the interval's draws, the relative
  width of each interval, the RMSE of the log-space residuals, and points per parameter. A fit is
  *identifiable* only when none of these fails.
* ``compare_forms``: the full form against reduced ones (E = 0; one variable, with or without E; a
  plain log-linear law; a constant, i.e. no scaling at all) by cross-validated error (leave-one-out up to
  ``LOO_MAX_POINTS`` points, else 5-fold). The simplest form within one standard error of the best
  is chosen (the one-standard-error rule); the constant winning means the data hold no law.
* ``held_out``: refit the chosen form on every point but the largest budget (or compute) and predict
  the held-out runs, with a 95% prediction interval (the linearised least-squares prediction,
  t-calibrated, plus a new run's scatter).

Compute-optimal allocation under a study's own FLOPs (``compute.AffineCompute``: FLOPs per image are
fixed + per_param * N, xtra.costs) is solved numerically, with local exponents and bands (over the
parameter draws) on N_opt, D_opt and D/N (``ChinchillaFit.allocation``). Without it, ``C = c * N**g * D``;
``c = 6, g = 1`` is the language-model rule (6 FLOPs per parameter per token); ``flops_model(N,
flops_per_image)`` fits c and g to trials' own FLOPs per image against the N the law is fitted in (e.g.
encoder parameters, when the predictor and heads do not scale), so that ``C`` is in real training FLOPs
and ``D`` in images.
"""

from .compute import AffineCompute, allocation_bands, local_exponents, optimal_allocation
from .diagnostics import Diagnostics
from .fit import FormFit, fit_form
from .forms import CONSTANT, FORMS_1D, FORMS_2D, HUBER_DELTA, LEVEL, NAMES_1D, NAMES_2D, Form
from .laws import ChinchillaFit, PowerLawFit, fit_chinchilla, fit_power_law, flops_model
from .select import (
                     Comparison,
                     FormScore,
                     HeldOut,
                     LawAnalysis,
                     analyze_chinchilla,
                     analyze_power_law,
                     compare_forms,
                     held_out,
)

__all__ = ["AffineCompute", "allocation_bands", "local_exponents", "optimal_allocation",
           "CONSTANT", "FORMS_1D", "FORMS_2D", "HUBER_DELTA", "LEVEL", "NAMES_1D", "NAMES_2D", "ChinchillaFit",
           "Comparison", "Diagnostics", "Form", "FormFit", "FormScore", "HeldOut", "LawAnalysis", "PowerLawFit",
           "analyze_chinchilla", "analyze_power_law", "compare_forms", "fit_chinchilla", "fit_form",
           "fit_power_law", "flops_model", "held_out"]
