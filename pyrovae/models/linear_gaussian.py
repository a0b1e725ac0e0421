"""A linear-Gaussian latent model where everything an estimator approximates is closed-form.

Model (``Z`` latent and ``D`` observed dimensions, ``N`` independent data points)::

    z ~ N(0, I_Z),    x | z ~ N(W z + b, s^2 I_D)

so ``p(x) = N(x; b, W W^T + s^2 I_D)`` and ``p(z | x) = N(S W^T (x - b) / s^2, S)`` with
``S = (I_Z + W^T W / s^2)^{-1}`` (e.g. Bishop 2006, sec. 12.2, probabilistic PCA). The guide is an
amortized linear Gaussian ``q(z | x) = N(A x + c, L L^T)``; it contains the exact posterior, and
its ELBO is closed-form. Model and guide have the same structure as the VAE's (sites ``"latent"``
and ``"obs"`` in ``pyro.plate("data", N)``, modules registered as ``"decoder"``/``"encoder"``,
beta through the KLWeight handler on the latent site in both), so any pyrovae estimator can be checked
against :func:`log_marginal` and :func:`closed_form_elbo`.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = [
    "LinearGaussianGuide",
    "LinearGaussianModel",
    "closed_form_elbo",
    "exact_guide",
    "log_marginal",
    "make_problem",
]


def _parameter(value: torch.Tensor) -> nn.Parameter:
    # Contiguous, or pyro.module's param store would hold a contiguous copy instead of this
    # tensor (and JitTrace_ELBO would then fail).
    return nn.Parameter(value.detach().clone().contiguous())


class LinearGaussianModel(nn.Module):
    """``p(z) = N(0, I_Z)``, ``p(x | z) = N(W z + b, s^2 I_D)``.

    :param weight: ``W``, shape ``(D, Z)``.
    :param bias: ``b``, shape ``(D,)``.
    :param scale: ``s > 0``, the observation noise standard deviation (stored as ``log s``).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, scale: float | torch.Tensor):
        super().__init__()
        self.weight = _parameter(weight)
        self.bias = _parameter(bias)
        self.log_scale = _parameter(torch.as_tensor(scale, dtype=weight.dtype).log())

    @property
    def latent_dim(self) -> int:
        return self.weight.shape[1]

    def model(self, x: torch.Tensor) -> None:
        """Pyro model for data ``x`` of shape ``(N, D)``."""
        pyro.module("decoder", self)
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample(
                "latent",
                dist.Normal(x.new_zeros(n, self.latent_dim), x.new_ones(n, self.latent_dim)).to_event(1),
            )
            loc = z @ self.weight.T + self.bias  # z may carry particle dims: (..., N, Z)
            pyro.sample("obs", dist.Normal(loc, self.log_scale.exp()).to_event(1), obs=x)


class LinearGaussianGuide(nn.Module):
    """``q(z | x) = N(A x + c, L L^T)`` with ``L`` lower-triangular, positive diagonal.

    With ``diagonal=True`` the off-diagonal of ``L`` is absent and the site is
    ``Normal(loc, scale).to_event(1)`` exactly like the VAE's guide; otherwise it is a
    ``MultivariateNormal`` with ``scale_tril=L``.

    :param weight: ``A``, shape ``(Z, D)``.
    :param bias: ``c``, shape ``(Z,)``.
    :param scale_tril: ``L``, shape ``(Z, Z)`` (only its diagonal is used if ``diagonal``).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        scale_tril: torch.Tensor,
        diagonal: bool = False,
    ):
        super().__init__()
        self.diagonal = diagonal
        self.weight = _parameter(weight)
        self.bias = _parameter(bias)
        self.log_diag = _parameter(scale_tril.diagonal().log())
        if not diagonal:
            self.offdiag = _parameter(scale_tril.tril(-1))

    @property
    def scale_tril(self) -> torch.Tensor:
        """``L``, shape ``(Z, Z)``."""
        diag = torch.diag_embed(self.log_diag.exp())
        return diag if self.diagonal else diag + self.offdiag.tril(-1)

    def loc(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mean map ``A x + c``, shape ``(N, Z)``."""
        return x @ self.weight.T + self.bias

    def guide(self, x: torch.Tensor) -> None:
        """Pyro guide for data ``x`` of shape ``(N, D)``."""
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            loc = self.loc(x)
            if self.diagonal:
                q = dist.Normal(loc, self.log_diag.exp().expand_as(loc)).to_event(1)
            else:
                q = dist.MultivariateNormal(loc, scale_tril=self.scale_tril)
            pyro.sample("latent", q)


def _posterior_cov(model: LinearGaussianModel) -> torch.Tensor:
    w, s2 = model.weight, (2 * model.log_scale).exp()
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    return torch.linalg.inv(eye + w.T @ w / s2)


def log_marginal(model: LinearGaussianModel, x: torch.Tensor) -> torch.Tensor:
    """``log p(x_n) = log N(x_n; b, W W^T + s^2 I)``, shape ``(N,)``, nats; differentiable."""
    w, s2 = model.weight, (2 * model.log_scale).exp()
    cov = w @ w.T + s2 * torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return dist.MultivariateNormal(model.bias, covariance_matrix=cov).log_prob(x)


def exact_guide(model: LinearGaussianModel, diagonal: bool = False) -> LinearGaussianGuide:
    """The guide equal to the exact posterior ``p(z | x)`` at the model's current parameters.

    ``diagonal=True`` needs ``W^T W`` diagonal (orthogonal columns of ``W``), else the posterior
    is not a diagonal Gaussian and a ``ValueError`` is raised.
    """
    with torch.no_grad():
        cov = _posterior_cov(model)
        if diagonal and not torch.allclose(cov, torch.diag_embed(cov.diagonal())):
            raise ValueError("the posterior is not diagonal: W needs orthogonal columns")
        gain = cov @ model.weight.T / (2 * model.log_scale).exp()  # (Z, D)
        return LinearGaussianGuide(
            gain, -gain @ model.bias, torch.linalg.cholesky(cov), diagonal=diagonal
        )


def closed_form_elbo(
    model: LinearGaussianModel,
    guide: LinearGaussianGuide,
    x: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``E_q[log p(x_n | z)] - beta * KL(q(z | x_n) || p(z))``, shape ``(N,)``, nats.

    Differentiable in the parameters of both ``model`` and ``guide``; with ``beta = 1`` this is
    the ELBO, equal to :func:`log_marginal` exactly when ``guide`` is the posterior.
    """
    w, b, s2 = model.weight, model.bias, (2 * model.log_scale).exp()
    mu, tril = guide.loc(x), guide.scale_tril
    cov = tril @ tril.T
    d, z = w.shape
    resid = x - mu @ w.T - b
    expected_loglik = -0.5 * (
        d * math.log(2 * math.pi) + d * torch.log(s2)
        + ((resid**2).sum(-1) + torch.trace(w @ cov @ w.T)) / s2
    )
    kl = 0.5 * (torch.trace(cov) + (mu**2).sum(-1) - z) - tril.diagonal().log().sum()
    return expected_loglik - beta * kl


def make_problem(
    data_dim: int = 3,
    latent_dim: int = 2,
    num_data: int = 2,
    diagonal: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[LinearGaussianModel, LinearGaussianGuide, torch.Tensor]:
    """A seeded test problem: ``(model, guide, x)`` with ``x`` of shape ``(num_data, data_dim)``.

    ``W`` has orthogonal columns, so the exact posterior is diagonal and
    ``exact_guide(model, diagonal=True)`` works; ``guide`` is an arbitrary (not exact) guide,
    diagonal or full-covariance. The global RNG is not touched.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    basis, _ = torch.linalg.qr(randn(data_dim, latent_dim))
    weight = basis * torch.linspace(1.5, 0.7, latent_dim, dtype=dtype)
    model = LinearGaussianModel(weight, randn(data_dim), 0.6)
    with torch.no_grad():
        z = randn(num_data, latent_dim)
        x = z @ weight.T + model.bias + 0.6 * randn(num_data, data_dim)
    tril = torch.diag_embed(torch.linspace(0.5, 0.9, latent_dim, dtype=dtype))
    if not diagonal:
        tril = tril + 0.3 * randn(latent_dim, latent_dim).tril(-1)
    guide = LinearGaussianGuide(
        0.3 * randn(latent_dim, data_dim), 0.5 * randn(latent_dim), tril, diagonal=diagonal
    )
    return model, guide, x
