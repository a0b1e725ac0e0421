"""What every estimator and every evaluation reads off a pair of traces: sites and log weights.

Latent sites are the guide's unobserved sample sites, observed sites the model's ``obs=`` sites; no
site is known by name. The log weight ``log p(x, z) - log q(z|x)`` is computed here once, for the
importance-weighted objectives (:mod:`pyrovae.infer.estimators`) and for the importance-sampled
``log p(x)`` (:mod:`pyrovae.evaluation.metrics`).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import get_dependent_plate_dims
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import PyrovaeError

__all__ = ["align", "dependences", "latent_sites", "log_weight", "observed_sites", "path_scale",
           "require_independent", "require_reparameterized", "sample_sites", "site_log_prob",
           "sum_keepdim"]


def sample_sites(trace: Trace) -> list[dict]:
    """Sample sites, in execution order, without the plates' subsample sites."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def latent_sites(trace: Trace) -> list[dict]:
    """Unobserved sample sites, in execution order."""
    return [s for s in sample_sites(trace) if not s["is_observed"]]


def observed_sites(trace: Trace) -> list[dict]:
    """Observed sample sites (``obs=``), in execution order."""
    return [s for s in sample_sites(trace) if s["is_observed"]]


def site_log_prob(site: dict, scaled: bool = True) -> torch.Tensor:
    """The site's masked ``log_prob`` (batch shape), times its scale when ``scaled``.

    ``scaled=False`` is the model's own density, whatever weight a handler (beta) put on it.
    """
    if scaled and "log_prob" in site:
        return site["log_prob"]
    log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_p, site["scale"] if scaled else 1.0, site["mask"])


def dependences(guide_trace: Trace) -> list[tuple[str, str]]:
    """``(site, depends_on)`` pairs of latent guide sites whose distribution depends on another
    site's (reparameterized) value, found with autograd: trace the guide with gradients enabled.
    A value drawn without a path (a discrete site) shows no dependence here."""
    sites = latent_sites(guide_trace)
    pairs = []
    for site in sites:
        value = site["value"]
        if not (isinstance(value, torch.Tensor) and value.requires_grad):
            continue
        for other in sites:
            if other is site:
                continue
            term = other["fn"].log_prob(other["value"].detach()).sum()
            if term.requires_grad and torch.autograd.grad(term, value, retain_graph=True,
                                                          allow_unused=True)[0] is not None:
                pairs.append((other["name"], site["name"]))
    return pairs


def require_independent(guide_trace: Trace, estimator: str) -> None:
    """Raise :class:`PyrovaeError` if a latent guide site's distribution depends on another's value."""
    pairs = dependences(guide_trace)
    if pairs:
        site, on = pairs[0]
        raise PyrovaeError(
            f"estimator {estimator!r} needs a guide whose latent sites do not depend on each other, but "
            f"the distribution of guide site {site!r} depends on the value of {on!r}; use 'trace' or "
            "'iwae' for hierarchical guides")


def require_reparameterized(guide_trace: Trace, estimator: str) -> None:
    """Raise :class:`PyrovaeError` unless every latent site of ``guide_trace`` has ``rsample``."""
    for site in latent_sites(guide_trace):
        if not site["fn"].has_rsample:
            raise PyrovaeError(
                f"estimator {estimator!r} needs reparameterized latent sites, but guide site "
                f"{site['name']!r} draws from {type(site['fn']).__name__}, which has no rsample "
                "(a discrete or otherwise non-reparameterizable distribution); use 'trace', "
                "'tracegraph' or 'enum', which handle such sites"
            )


def path_scale(site: dict) -> Any:
    """The weight ``c`` of ``log q`` in the log weight: the site's scale, 0 where it is masked
    (an auto-encoder's latent, or ``beta = 0``), where the log weight has no ``log q`` term."""
    mask = site["mask"]
    if mask is None or mask is True:
        return site["scale"]
    if mask is False:
        return 0.0
    return scale_and_mask(torch.ones_like(mask, dtype=site["value"].dtype), site["scale"], mask)


def sum_keepdim(tensor: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Sum over the negative ``dims`` that ``tensor`` has, keeping them as size-1 dims."""
    dims = [d for d in dims if -tensor.dim() <= d]
    return tensor.sum(dims, keepdim=True) if dims else tensor


def log_weight(model_trace: Trace, guide_trace: Trace, min_dim: int = 0) -> Any:
    """``log p(x, z) - log q(z)`` (scaled log-densities) summed over dependent plates.

    The dependent plates' dims are kept with size 1 and the result has at least ``min_dim`` dims
    (size-1 dims prepended), so a vectorized particle plate at dim ``-min_dim`` is its dim 0.
    Independent plates (the batch) stay separate: one weight per data point and particle.
    """
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    log_w: Any = 0.0
    for site in sample_sites(model_trace):
        log_w = log_w + sum_keepdim(site_log_prob(site), sum_dims)
    for site in latent_sites(guide_trace):
        log_w = log_w - sum_keepdim(site_log_prob(site), sum_dims)
    if isinstance(log_w, torch.Tensor) and log_w.dim() < min_dim:
        log_w = log_w.reshape((1,) * (min_dim - log_w.dim()) + log_w.shape)
    return log_w


def align(weight: torch.Tensor, site: dict) -> torch.Tensor:
    """Drop leading size-1 dims of per-particle weights so they right-align with the site's
    batch dims (plates are right-aligned, dependent plates kept as size-1 dims)."""
    batch_dim = len(site["fn"].batch_shape)
    while weight.dim() > batch_dim and weight.shape[0] == 1:
        weight = weight.squeeze(0)
    return weight
