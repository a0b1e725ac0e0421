"""Closed forms for the Bernoulli-latent toy: no sampling anywhere in this module.

With two latent states everything is a sum of two terms. For data ``x`` of shape ``(n,)`` every
function returns one value per point (shape ``(n,)``, in nats); sum them for the data set. ``p``
and ``sigma`` may be floats or 0-d tensors (tensors keep their autograd graph). A guide is given by
its logits ``q_logits = logit q(z_i = 1 | x_i)``, shape ``(n,)``, so any guide can be scored.

Identity checked by the tests: ``log p(x_i) = elbo_i(q) + KL(q(z|x_i) || p(z|x_i))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Bernoulli, kl_divergence

from pyrovae.experiments.toy.data import check_data, check_p, check_positive_int, check_sigma

Number = float | torch.Tensor


def log_joint(x: torch.Tensor, p: Number, sigma: Number) -> torch.Tensor:
    """``log p(x_i, z_i = k)`` for ``k = 0, 1``; shape ``(2, n)``."""
    x, p, sigma = _checked(x, p, sigma)
    return _log_joint(x, p, sigma)


def log_marginal(x: torch.Tensor, p: Number, sigma: Number) -> torch.Tensor:
    """``log p(x_i) = log[(1 - p) N(x_i | 0, sigma) + p N(x_i | 1, sigma)]``; shape ``(n,)``."""
    x, p, sigma = _checked(x, p, sigma)
    return torch.logsumexp(_log_joint(x, p, sigma), dim=0)


def posterior_params(
    p: Number, sigma: Number, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, b)`` with ``logit p(z = 1 | x) = w x + b``: ``w = 1/sigma^2``, ``b = logit p - w/2``.

    The exact posterior is inside the affine guide family, so a converged guide has these values.
    """
    check_p(p)
    check_sigma(sigma)
    p, sigma = torch.as_tensor(p, dtype=dtype), torch.as_tensor(sigma, dtype=dtype)
    w = sigma**-2
    return w, torch.log(p) - torch.log1p(-p) - 0.5 * w


def posterior_logit(x: torch.Tensor, p: Number, sigma: Number) -> torch.Tensor:
    """``logit p(z_i = 1 | x_i)`` by Bayes' rule; shape ``(n,)``."""
    x, p, sigma = _checked(x, p, sigma)
    lj = _log_joint(x, p, sigma)
    return lj[1] - lj[0]


def posterior_prob(x: torch.Tensor, p: Number, sigma: Number) -> torch.Tensor:
    """``p(z_i = 1 | x_i)``, the responsibility of the ``N(1, sigma)`` component; shape ``(n,)``."""
    return torch.sigmoid(posterior_logit(x, p, sigma))


def elbo(x: torch.Tensor, q_logits: torch.Tensor, p: Number, sigma: Number) -> torch.Tensor:
    """Exact ELBO ``E_q[log p(x_i, z)] + H[q(z | x_i)]`` of the guide ``q_logits``; ``(n,)``."""
    x, p, sigma = _checked(x, p, sigma)
    q_logits = torch.as_tensor(q_logits, dtype=x.dtype)
    lj = _log_joint(x, p, sigma)
    q1 = torch.sigmoid(q_logits)
    q0 = torch.sigmoid(-q_logits)  # not 1 - q1: keeps precision when q1 is close to 1
    return q0 * lj[0] + q1 * lj[1] + Bernoulli(logits=q_logits).entropy()


def kl_to_posterior(
    x: torch.Tensor, q_logits: torch.Tensor, p: Number, sigma: Number
) -> torch.Tensor:
    """``KL(q(z | x_i) || p(z | x_i))`` in nats; shape ``(n,)``; zero iff the guide is exact."""
    x, p, sigma = _checked(x, p, sigma)
    q_logits = torch.as_tensor(q_logits, dtype=x.dtype)
    lj = _log_joint(x, p, sigma)
    return kl_divergence(Bernoulli(logits=q_logits), Bernoulli(logits=lj[1] - lj[0]))


@dataclass(frozen=True)
class EMResult:
    """Maximum-likelihood estimate found by expectation-maximization."""

    p: float
    sigma: float
    loglik: float  # total log-likelihood of the data at (p, sigma), nats
    iterations: int
    converged: bool


def em(
    x: torch.Tensor,
    p_init: float = 0.5,
    sigma: float = 1.0,
    learn_sigma: bool = False,
    tol: float = 1e-12,
    max_iter: int = 10_000,
) -> EMResult:
    """Maximum-likelihood ``p`` (and ``sigma`` when ``learn_sigma``) by EM.

    E-step: responsibilities ``r_i = p(z_i = 1 | x_i)``. M-step: ``p = mean(r)`` and
    ``sigma^2 = mean(r (x - 1)^2 + (1 - r) x^2)``. Stops when neither parameter moves by more
    than ``tol``. Runs in float64 whatever the dtype of ``x``.
    """
    x = check_data(x).to(torch.float64)
    p = torch.tensor(check_p(p_init, "p_init", "--p-init"), dtype=torch.float64)
    s = torch.tensor(check_sigma(sigma), dtype=torch.float64)
    max_iter = check_positive_int(max_iter, "max_iter", "max_iter")
    converged = False
    iterations = 0
    while not converged and iterations < max_iter:
        iterations += 1
        lj = _log_joint(x, p, s)
        r = torch.sigmoid(lj[1] - lj[0])
        p_new = r.mean()
        s_new = ((r * (x - 1) ** 2 + (1 - r) * x**2).mean()).sqrt() if learn_sigma else s
        moved = max(abs(float(p_new - p)), abs(float(s_new - s)))
        p, s = p_new, s_new
        converged = moved < tol
    loglik = float(torch.logsumexp(_log_joint(x, p, s), dim=0).sum())
    return EMResult(float(p), float(s), loglik, iterations, converged)


def mle_standard_errors(
    x: torch.Tensor, p: float, sigma: float, learn_sigma: bool = False
) -> dict[str, float]:
    """Asymptotic standard errors ``sqrt(diag(I^-1))`` from the observed information at an MLE.

    ``I`` is minus the Hessian of the exact total log-likelihood in ``p`` (and ``sigma``). This is
    the estimate's own statistical tolerance: an optimizer closer than this to the MLE is done.
    """
    x = check_data(x).to(torch.float64)
    check_p(p)
    check_sigma(sigma)
    names = ["p", "sigma"] if learn_sigma else ["p"]
    theta0 = torch.tensor([p, sigma][: len(names)], dtype=torch.float64)

    def loglik(theta: torch.Tensor) -> torch.Tensor:
        s = theta[1] if learn_sigma else torch.tensor(sigma, dtype=torch.float64)
        return torch.logsumexp(_log_joint(x, theta[0], s), dim=0).sum()

    info = -torch.autograd.functional.hessian(loglik, theta0)
    cov = torch.linalg.inv(info)
    return {name: math.sqrt(float(cov[i, i])) for i, name in enumerate(names)}


def _checked(
    x: torch.Tensor, p: Number, sigma: Number
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = check_data(x)
    check_p(p)
    check_sigma(sigma)
    return x, torch.as_tensor(p, dtype=x.dtype), torch.as_tensor(sigma, dtype=x.dtype)


def _log_joint(x: torch.Tensor, p: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    log_prior = torch.stack([torch.log1p(-p), torch.log(p)]).unsqueeze(-1)  # (2, 1)
    locs = torch.tensor([[0.0], [1.0]], dtype=x.dtype)  # z = 0, 1
    log_lik = -0.5 * ((x - locs) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return log_prior + log_lik  # (2, n)
