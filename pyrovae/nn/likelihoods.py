"""Observation models ``p(x | z)``: the decoder's per-pixel output -> a distribution over pixels.

| name | distribution | data | loss it generalizes |
| --- | --- | --- | --- |
| ``bernoulli`` | ``Bernoulli(logits=out)`` | binary {0, 1} | binary cross-entropy |
| ``continuous-bernoulli`` | ``ContinuousBernoulliLogits(out)`` | [0, 1] | normalized BCE |
| ``gaussian`` | ``Normal(sigmoid(out), scale)`` | [0, 1] | squared error (MSE) |
| ``laplace`` | ``Laplace(sigmoid(out), scale)`` | [0, 1] | absolute error (MAE) |

``scale`` is a fixed number or, with ``scale=None``, one learned positive scalar. Distributions have
batch shape ``(..., C, H, W)``; the model makes the pixel dims an event with ``.to_event(3)``.

The continuous Bernoulli is :class:`ContinuousBernoulliLogits`, written in the logits: torch's
``ContinuousBernoulli`` computes its normaliser from probabilities clamped away from 0 and 1 and its
cross-entropy from the raw logits, so in float32 its density integrates to 0.99 at logit 15, 0.80 at
20 and 0.40 at 40, and its ELBO, ``log p(x)`` and gradients are not those of a density there.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from pyrovae import checks
from pyrovae.errors import PyrovaeError

_MIN_SCALE = 1e-3


class Likelihood(nn.Module):
    """Base class: ``distribution(out)`` and ``mean(out)`` for decoder outputs ``out``."""

    name: str = ""
    needs_binary = False

    def distribution(self, out: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The mean image ``E[x | z]`` in [0, 1], same shape as ``out``."""
        return torch.sigmoid(out)

    def check(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise a clear error when ``x`` is outside this likelihood's support."""
        if not torch.isfinite(x).all():
            raise PyrovaeError(f"{what} contains NaN or inf values: clean the data first")
        if x.min() < 0 or x.max() > 1:
            raise PyrovaeError(
                f"{what} must lie in [0, 1] for --likelihood {self.name}, got "
                f"[{x.min().item():.3g}, {x.max().item():.3g}]: rescale the images"
            )
        if self.needs_binary and not ((x == 0) | (x == 1)).all():
            raise PyrovaeError(
                f"--likelihood {self.name} needs binary data (0 or 1) but {what} has grey levels: "
                "pass --binarize dynamic (or static), or use --likelihood continuous-bernoulli, "
                "gaussian or laplace"
            )


class Bernoulli(Likelihood):
    name = "bernoulli"
    needs_binary = True

    def distribution(self, out):
        return dist.Bernoulli(logits=out)


def _series_cut(dtype: torch.dtype) -> float:
    """|logit| below which power series replace closed forms that cancel near 0: about where
    truncation and rounding errors meet, for float64 and for float32 and below."""
    return 0.05 if dtype == torch.float64 else 0.3


def _sampler_cut(dtype: torch.dtype) -> float:
    """The same for the cdf and quantile function, whose series stop at ``eta^2``."""
    return 1e-5 if dtype == torch.float64 else 1e-3


def _near_zero(eta: torch.Tensor, cut: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(small, far, near)``: the mask ``|eta| < cut``, ``eta`` with the small entries moved to
    ``cut`` (for the closed form) and with the others set to 0 (for the series). Both branches of
    a ``torch.where`` are differentiated, so neither may see a value where it is NaN or inf."""
    small = eta.abs() < cut
    return small, torch.where(small, torch.full_like(eta, cut), eta), torch.where(small, eta, 0.0)


def cb_log_normalizer(eta: torch.Tensor) -> torch.Tensor:
    """``log C(eta) = log(eta / tanh(eta / 2))``, the continuous Bernoulli's log-normaliser in the
    logit ``eta`` (Loaiza-Ganem & Cunningham 2019, eq. 7 with ``lambda = sigmoid(eta)``); even in
    ``eta``, ``log 2`` at 0, about ``log |eta|`` for large ``|eta|``."""
    small, far, near = _near_zero(eta, _series_cut(eta.dtype))
    a = far.abs()
    # log|eta| - log tanh(|eta|/2), with tanh(a/2) = -expm1(-a) / (1 + exp(-a))
    closed = a.log() - torch.log(-torch.expm1(-a)) + torch.log1p(torch.exp(-a))
    e2 = near * near
    series = math.log(2) + e2 * (1 / 12 + e2 * (-7 / 1440 + e2 * (31 / 90720 - e2 * 127 / 4838400)))
    return torch.where(small, series, closed)


class ContinuousBernoulliLogits(dist.TorchDistribution):
    r"""The continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham 2019) in its logits ``eta``:
    ``log p(x | eta) = x eta - softplus(eta) + log C(eta)`` (see :func:`cb_log_normalizer`),
    stable at every logit; mean, variance, cdf and the reparameterized sampler are stable too.
    It is the exponential family ``p(x) = exp(eta x) / Z(eta)`` with ``Z = expm1(eta) / eta``.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, logits: torch.Tensor | float, validate_args: bool | None = None):
        (self.logits,) = broadcast_all(logits)
        super().__init__(self.logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> ContinuousBernoulliLogits:
        new = self._get_checked_instance(ContinuousBernoulliLogits, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape)
        super(ContinuousBernoulliLogits, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        eta = self.logits
        return value * eta - F.softplus(eta) + cb_log_normalizer(eta)

    @property
    def mean(self) -> torch.Tensor:
        """``1 / (1 - exp(-eta)) - 1 / eta``; 1/2 at 0, ``1 - 1/eta`` for large ``eta``."""
        small, far, near = _near_zero(self.logits, _series_cut(self.logits.dtype))
        closed = -1 / torch.expm1(-far) - 1 / far
        e2 = near * near
        series = 0.5 + near * (1 / 12 + e2 * (-1 / 720 + e2 / 30240))
        return torch.where(small, series, closed)

    @property
    def variance(self) -> torch.Tensor:
        """``1 / eta^2 - 1 / (4 sinh(eta / 2)^2)``, the second derivative of ``log Z``; 1/12 at 0."""
        small, far, near = _near_zero(self.logits, _series_cut(self.logits.dtype))
        closed = far.pow(-2) - 0.25 * torch.sinh(far / 2).pow(-2)
        e2 = near * near
        series = 1 / 12 + e2 * (-1 / 240 + e2 * (1 / 6048 - e2 / 172800))
        return torch.where(small, series, closed)

    def entropy(self) -> torch.Tensor:
        eta = self.logits
        return F.softplus(eta) - cb_log_normalizer(eta) - eta * self.mean

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """``expm1(eta x) / expm1(eta)``, written without overflow for large positive ``eta``."""
        if self._validate_args:
            self._validate_sample(value)
        eta, value = broadcast_all(self.logits, value)
        small, far, near = _near_zero(eta, _sampler_cut(eta.dtype))
        pos = far > 0
        neg_far = torch.where(pos, -far, far)  # -|eta|: expm1 of it never overflows
        ratio = torch.expm1(neg_far * torch.where(pos, 1 - value, value)) / torch.expm1(neg_far)
        closed = torch.where(pos, 1 - ratio, ratio)  # F_eta(x) = 1 - F_{-eta}(1 - x)
        v = value * (1 - value)
        series = value - v * near / 2 + v * (1 - 2 * value) * near * near / 12
        return torch.where(small, series, closed).clamp(0, 1)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """``log1p(u expm1(eta)) / eta``, by the symmetry ``1 - icdf_{-eta}(1 - u)`` for ``eta > 0``."""
        eta, value = broadcast_all(self.logits, value)
        small, far, near = _near_zero(eta, _sampler_cut(eta.dtype))
        pos = far > 0
        neg_far = torch.where(pos, -far, far)
        u = torch.where(pos, 1 - value, value)
        low = torch.log1p(u * torch.expm1(neg_far)) / neg_far  # the quantile of CB(-|eta|) at u
        closed = torch.where(pos, 1 - low, low)
        v = value * (1 - value)
        series = value + v * near / 2 + v * (1 - 2 * value) * near * near / 6
        return torch.where(small, series, closed).clamp(0, 1)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        return self.icdf(u)


class ContinuousBernoulli(Likelihood):
    name = "continuous-bernoulli"

    def distribution(self, out):
        return ContinuousBernoulliLogits(out)

    def mean(self, out):
        return ContinuousBernoulliLogits(out).mean


class _LocScale(Likelihood):
    family: type[dist.TorchDistribution]

    def __init__(self, scale: float | None = None):
        super().__init__()
        if scale is None:
            # softplus(raw) + min = 0.1 at the start: a plausible pixel noise for [0, 1] images
            raw = math.log(math.expm1(0.1 - _MIN_SCALE))
            self.raw_scale = nn.Parameter(torch.tensor(raw))
        else:
            if not (scale > 0 and math.isfinite(scale)):
                raise PyrovaeError(f"--obs-scale must be a positive number, got {scale}")
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))

    @property
    def scale(self) -> torch.Tensor:
        if hasattr(self, "raw_scale"):
            return F.softplus(self.raw_scale) + _MIN_SCALE
        return self.fixed_scale

    def distribution(self, out):
        return self.family(torch.sigmoid(out), self.scale)


class Gaussian(_LocScale):
    name = "gaussian"
    family = dist.Normal


class Laplace(_LocScale):
    name = "laplace"
    family = dist.Laplace


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Bernoulli, ContinuousBernoulli, Gaussian, Laplace)
}


def build_likelihood(name: str, obs_scale: float | None = None) -> Likelihood:
    """The likelihood named ``name``; ``obs_scale`` (gaussian, laplace) fixed, or None to learn it."""
    if name not in LIKELIHOODS:
        raise PyrovaeError(f"unknown --likelihood {name!r}: choose one of {', '.join(LIKELIHOODS)}")
    cls = LIKELIHOODS[name]
    if issubclass(cls, _LocScale):
        return cls(obs_scale)
    if obs_scale is not None:
        raise PyrovaeError(f"{checks.label('obs_scale', '--obs-scale')} applies to the gaussian and "
                           f"laplace likelihoods only, not {name!r}: leave it out")
    return cls()
