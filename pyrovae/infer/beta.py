"""beta, the KL weight, as an effect handler on every latent site of model and guide.

``log p(x, z) - log q(z|x)`` splits into the observation term ``log p(x|z)`` and the latent term
``log p(z) - log q(z|x)`` (the KL part of the ELBO). :class:`KLWeight` multiplies the log-densities of
every unobserved sample site by ``beta``, in the model and in the guide alike, so any model and any
estimator get the beta-VAE objective without taking a ``beta`` argument (Higgins et al. 2017; the
same wrapping Pyro's ``examples/dmm.py`` uses for KL annealing, there through ``poutine.scale``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from pyro.poutine.messenger import Messenger

from pyrovae import checks
from pyrovae.errors import PyrovaeError

__all__ = ["MAX_BETA", "KLWeight", "check_beta", "kl_weight"]

# Far past any useful weight (beta = 1e6 already pins q to the prior), and small enough that
# beta * KL stays finite in float32 for any KL below 1e32 nats.
MAX_BETA = 1e6


def check_beta(beta: Any, name: str = "beta") -> float:
    """``beta`` as a float in ``[0, MAX_BETA]``, else a :class:`PyrovaeError` naming ``name``."""
    return checks.finite(beta, name, minimum=0, maximum=MAX_BETA)


class KLWeight(Messenger):
    """Scale the log-density of latent sample sites by ``beta`` (observed sites are left alone).

    ``beta`` is a Python number or a 0-dim tensor. A number 0 masks the sites instead (Pyro's
    ``poutine.scale`` rejects 0, and KL schedules start there): ``log p(z) - log q(z|x)`` leaves
    loss and gradient while ``z`` is still drawn, reparameterized, for the reconstruction term. A
    tensor is applied as a scale with no host-side check, so a training loop can ``fill_`` it in place
    between steps (a CUDA graph or compiled step then never sees a new constant).

    :param sites: names of the sites to weight; ``None`` weights every latent site.
    """

    def __init__(self, beta: float | torch.Tensor, sites: Collection[str] | None = None):
        super().__init__()
        if not isinstance(beta, torch.Tensor):
            check_beta(beta)
        elif beta.dim() != 0:
            raise PyrovaeError(f"beta must be a number or a 0-dim tensor, got shape {tuple(beta.shape)}")
        if sites is not None and isinstance(sites, str):
            sites = [sites]
        self.beta = beta
        self.sites = None if sites is None else frozenset(sites)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["is_observed"] or (self.sites is not None and msg["name"] not in self.sites):
            return
        beta = self.beta
        if isinstance(beta, torch.Tensor):
            msg["scale"] = beta * msg["scale"]
        elif beta == 0:
            msg["mask"] = False
        elif beta != 1:
            msg["scale"] = beta * msg["scale"]


def kl_weight(beta: float | torch.Tensor, sites: Collection[str] | None = None,
              fn: Callable | None = None) -> Any:
    """``KLWeight(beta, sites)`` as a context manager, or wrapping ``fn`` when given.

    Example: ``elbo.loss(kl_weight(4.0, fn=m.model), kl_weight(4.0, fn=m.guide), x)`` is the
    beta-VAE loss with beta 4 for any model ``m``; ``with kl_weight(0.5): ...`` does the same
    for every model and guide run inside the block.
    """
    handler = KLWeight(beta, sites)
    return handler if fn is None else handler(fn)
