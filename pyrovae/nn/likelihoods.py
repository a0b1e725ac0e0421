"""Observation models ``p(x | z)``: the decoder's per-pixel output -> a distribution over pixels.

| name | distribution | data | loss it generalizes |
| --- | --- | --- | --- |
| ``bernoulli`` | ``Bernoulli(logits=out)`` | binary {0, 1} | binary cross-entropy |
| ``continuous-bernoulli`` | ``ContinuousBernoulli(logits=out)`` | [0, 1] | normalized BCE |
| ``gaussian`` | ``Normal(sigmoid(out), scale)`` | [0, 1] | squared error (MSE) |
| ``laplace`` | ``Laplace(sigmoid(out), scale)`` | [0, 1] | absolute error (MAE) |

``scale`` is a fixed number or, with ``scale=None``, one learned positive scalar. Distributions have
batch shape ``(..., C, H, W)``; the model makes the pixel dims an event with ``.to_event(3)``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

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


class ContinuousBernoulli(Likelihood):
    name = "continuous-bernoulli"

    def distribution(self, out):
        return dist.ContinuousBernoulli(logits=out)

    def mean(self, out):
        return dist.ContinuousBernoulli(logits=out).mean


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
    return cls()
