"""The toy as a Pyro program: model ``p(z) p(x | z)``, an amortized guide ``q(z | x)``, and the
estimators of the one registry (:mod:`pyrovae.infer.registry`) that suit a discrete latent.

Parameters live in Pyro's param store under the names in ``PARAM_NAMES``: ``p`` (constrained to the
unit interval, so its unconstrained value is ``logit p``), ``sigma`` (positive, only when learned),
and the guide's affine logit ``guide_w * x + guide_b``. The exact posterior logit is affine in
``x`` (see :func:`pyrovae.experiments.toy.exact.posterior_params`), so the guide family contains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyrovae.errors import PyrovaeError
from pyrovae.experiments.toy.data import check_p, check_sigma

PARAM_NAMES = ("p", "sigma", "guide_w", "guide_b")


class BernoulliToy:
    """Model and amortized guide of ``z ~ Bernoulli(p)``, ``x | z ~ Normal(z, sigma)``.

    ``p_init`` and ``guide_init = (w, b)`` are where training starts; ``sigma`` is the fixed value,
    or the starting value when ``learn_sigma``. Both methods take data ``x`` of shape ``(n,)`` and
    create parameters in ``x``'s dtype. ``baseline`` gives the guide's site a decaying-average
    baseline (``baseline_beta``), which ``tracegraph`` uses to reduce the score function's variance.
    """

    def __init__(
        self,
        p_init: float = 0.5,
        sigma: float = 1.0,
        learn_sigma: bool = False,
        guide_init: tuple[float, float] = (0.0, 0.0),
        baseline: bool = False,
        baseline_beta: float = 0.9,
    ) -> None:
        self.p_init = check_p(p_init, "p_init", "--p-init")
        self.sigma = check_sigma(sigma)
        self.learn_sigma = bool(learn_sigma)
        self.guide_init = (float(guide_init[0]), float(guide_init[1]))
        # kept per data point (the downstream cost of z_i has shape (n,)): full batches only
        self.infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": baseline_beta}} \
            if baseline else {}

    def model(self, x: torch.Tensor) -> None:
        """``p(z, x)`` with the discrete site ``"z"`` and the observed site ``"x"``."""
        p, sigma = self._p(x.dtype), self._sigma(x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(p))
            # z is (n,) when sampled and (2, 1) when enumerated; both broadcast against x
            pyro.sample("x", dist.Normal(z, sigma), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """``q(z_i = 1 | x_i) = sigmoid(guide_w * x_i + guide_b)``."""
        w, b = self.guide_params(x.dtype)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=w * x + b), infer=dict(self.infer))

    def guide_params(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(w, b)`` from the param store (created at ``guide_init`` if absent)."""
        w = pyro.param("guide_w", lambda: torch.tensor(self.guide_init[0], dtype=dtype))
        b = pyro.param("guide_b", lambda: torch.tensor(self.guide_init[1], dtype=dtype))
        return w, b

    def guide_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``logit q(z_i = 1 | x_i)`` at the current parameters, detached; shape ``(n,)``."""
        w, b = self.guide_params(x.dtype)
        return (w * x + b).detach()

    def model_params(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """Current ``(p, sigma)`` as detached 0-d tensors (created at their initial values)."""
        return self._p(dtype).detach(), self._sigma(dtype).detach()

    def _p(self, dtype: torch.dtype) -> torch.Tensor:
        init = torch.tensor(self.p_init, dtype=dtype)
        return pyro.param("p", lambda: init, constraint=constraints.unit_interval)

    def _sigma(self, dtype: torch.dtype) -> torch.Tensor:
        init = torch.tensor(self.sigma, dtype=dtype)
        if self.learn_sigma:
            return pyro.param("sigma", lambda: init, constraint=constraints.positive)
        return init


@dataclass(frozen=True)
class Estimator:
    """How one estimator trains the toy: a registry spec, whether the guide has a baseline, and a
    one-line summary."""

    spec: str
    baseline: bool
    summary: str


ESTIMATORS: dict[str, Estimator] = {
    "trace": Estimator("trace", False,
                       "Trace_ELBO: one sample of z, score-function gradient, no variance reduction"),
    "tracegraph": Estimator("tracegraph", True, "TraceGraph_ELBO: score function Rao-Blackwellized per "
                            "data point, decaying baseline"),
    "enum": Estimator("enum", False, "TraceEnum_ELBO: z enumerated in parallel in the guide, exact "
                      "ELBO and gradient"),
}


def get_estimator(name: str) -> Estimator:
    """Look up an estimator by name, with a clear error listing the known names."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ESTIMATORS))
        raise PyrovaeError(f"unknown estimator {name!r}: choose one of {known}") from None
