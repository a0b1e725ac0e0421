"""Evaluation of any model from its traces: ELBO parts, log p(x), active units, gradient noise,
codes and samples, sample quality."""

from pyrovae.evaluation.diagnostics import gradient_stats, param_groups
from pyrovae.evaluation.generate import encode, reconstruct, sample
from pyrovae.evaluation.metrics import active_units, elbo_terms, evaluate, log_likelihood

__all__ = ["active_units", "elbo_terms", "encode", "evaluate", "gradient_stats", "log_likelihood",
           "param_groups", "reconstruct", "sample"]
