"""Inference: beta as a handler, the estimator registry and its ELBO classes, KL schedules.

``traces`` (sites and log weights) -> ``estimators`` (one Pyro ELBO class each) -> ``registry``
(spec string -> ELBO); ``beta`` and ``schedules`` weight the latent sites over training.
"""

from pyrovae.infer.beta import KLWeight, kl_weight
from pyrovae.infer.registry import (
    capture_problem,
    describe_estimators,
    enumerates,
    estimator_names,
    make_elbo,
    spec_name,
)
from pyrovae.infer.schedules import parse_schedule

__all__ = ["KLWeight", "capture_problem", "describe_estimators", "enumerates", "estimator_names",
           "kl_weight", "make_elbo", "parse_schedule", "spec_name"]
