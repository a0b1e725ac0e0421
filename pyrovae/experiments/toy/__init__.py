"""The Bernoulli-latent toy (issue 4): ``z ~ Bernoulli(p)``, ``x | z ~ Normal(z, sigma)``.

Everything about it is computable exactly, which makes it the showcase for "maximizing the ELBO
maximizes the likelihood" and for comparing gradient estimators of a discrete latent.

Modules, in dependency order: ``data`` (sampling, validation) -> ``exact`` (closed forms, EM) ->
``model`` (Pyro model, guide, the registry estimators it uses) -> ``fit`` (through the one training
loop, :func:`pyrovae.train`) -> ``plots``; its command is :mod:`pyrovae.cli.toy`.
"""

from pyrovae.experiments.toy import exact, plots
from pyrovae.experiments.toy.data import check_data, sample_data
from pyrovae.experiments.toy.exact import EMResult, em, mle_standard_errors
from pyrovae.experiments.toy.fit import ToyFit, fit_toy
from pyrovae.experiments.toy.model import ESTIMATORS, BernoulliToy, Estimator, get_estimator

__all__ = [
    "ESTIMATORS",
    "BernoulliToy",
    "EMResult",
    "Estimator",
    "ToyFit",
    "check_data",
    "em",
    "exact",
    "fit_toy",
    "get_estimator",
    "mle_standard_errors",
    "plots",
    "sample_data",
]
