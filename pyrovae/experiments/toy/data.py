"""Sampling the toy data set and validating what users pass in.

The generative process is ``z_i ~ Bernoulli(p)``, ``x_i | z_i ~ Normal(z_i, sigma)``, so every
observation is a draw from the two-component mixture ``(1 - p) N(0, sigma) + p N(1, sigma)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyrovae.errors import PyrovaeError


def check_p(p: float, name: str = "p", flag: str = "--p") -> float:
    """Return ``p`` as a float after checking it lies strictly inside (0, 1)."""
    value = _as_float(p, name)
    if not 0.0 < value < 1.0:
        raise PyrovaeError(f"{name} must be in (0, 1), got {value}: pass {flag} between 0 and 1")
    return value


def check_sigma(sigma: float, name: str = "sigma", flag: str = "--sigma") -> float:
    """Return ``sigma`` as a float after checking it is finite and strictly positive."""
    value = _as_float(sigma, name)
    if not (value > 0.0 and math.isfinite(value)):
        raise PyrovaeError(f"{name} must be > 0 and finite, got {value}: pass a positive {flag}")
    return value


def check_positive_int(value: int, name: str, flag: str) -> int:
    """Return ``value`` after checking it is an integer >= 1 (sizes, step counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PyrovaeError(f"{name} must be a positive integer, got {value!r}: pass {flag} >= 1")
    return value


def check_data(x: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Return ``x`` as a 1-D floating tensor of shape ``(n,)`` with ``n >= 1`` finite values.

    Integer or list input becomes ``float64``; a floating tensor keeps its dtype.
    """
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        x = x.to(torch.float64)
    if x.dim() != 1:
        raise PyrovaeError(
            f"data must be a 1-D tensor of shape (n,), got shape {tuple(x.shape)}: flatten it first"
        )
    if x.numel() == 0:
        raise PyrovaeError("data is empty: pass at least one observation (n >= 1)")
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise PyrovaeError(
            f"data contains {int(bad.sum())} NaN or infinite value(s), the first at index {first}: "
            "drop or impute them before fitting"
        )
    return x


def sample_data(
    p: float, sigma: float, n: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points from the toy model; returns ``(x, z)``, both of shape ``(n,)``.

    ``z`` holds the latent states as 0./1. floats. A private generator seeded with ``seed`` is used,
    so the data set does not depend on (or disturb) the global torch/Pyro random state.
    """
    p = check_p(p)
    sigma = check_sigma(sigma)
    n = check_positive_int(n, "n", "--n")
    gen = torch.Generator().manual_seed(int(seed))
    z = (torch.rand(n, generator=gen, dtype=dtype) < p).to(dtype)
    x = z + sigma * torch.randn(n, generator=gen, dtype=dtype)
    return x, z


def _as_float(value: float, name: str) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise PyrovaeError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(out):
        raise PyrovaeError(f"{name} is NaN: pass a number")
    return out
