"""The VAE with an inverse autoregressive flow guide (Kingma et al., NeurIPS 2016).

The guide draws ``z0 ~ N(mu(x), sigma(x))`` from the VAE's encoder and pushes it through ``flows``
affine autoregressive transforms (Pyro's ``ConditionalAffineAutoregressive``), each
``z <- exp(s_t) * z + m_t`` with ``(m_t, s_t)`` from a masked network (MADE) of the earlier
coordinates of ``z`` and of a context ``h(x)``; each transform orders the coordinates by its own
random permutation. The site ``"latent"`` is ``TransformedDistribution(N(mu, sigma), transforms)``,
with density ``log q(z|x) = log N(z0; mu, sigma) - sum_t sum_d s_t,d``. The context is the encoder's
output ``h(x) = (mu(x), log sigma(x))``, a short stand-in for the paper's extra encoder head.

Drawing ``z`` and scoring that draw are cheap (Pyro caches each transform's inverse). ``stl`` and
``dreg`` also score the draw with its path cut, which runs the inverse, ``z_dim`` passes of each
network: they work, at that cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import conditional_affine_autoregressive
from torch import nn

from pyrovae import checks
from pyrovae.models.vae import VAE

__all__ = ["IAFVAE"]

FLOWS = 2


class IAFVAE(VAE):
    """A VAE whose guide is a Gaussian followed by ``flows`` IAF transforms (default 2); other
    arguments as :class:`~pyrovae.models.vae.VAE`. Each transform's network has one hidden layer
    of ``3 * z_dim + 1`` units (Pyro's default width for these networks)."""

    name = "iaf"

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None,
                 flows: int = FLOWS):
        flows = checks.whole(flows, checks.label("flows", "--model iaf:flows=N"))
        super().__init__(shape, z_dim, hidden, net, likelihood, obs_scale)
        self.flows = nn.ModuleList(
            conditional_affine_autoregressive(self.z_dim, 2 * self.z_dim, [3 * self.z_dim + 1])
            for _ in range(flows))
        self._spec["flows"] = flows

    def guide(self, x: torch.Tensor) -> None:
        """``z ~ q(z | x)``: the encoder's Gaussian through the flow."""
        pyro.module("flows", self.flows)
        super().guide(x)

    def posterior(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        context = torch.cat([loc, scale.log()], -1)
        transforms = [flow.condition(context) for flow in self.flows]
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), transforms)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the flow's image of the base mean, ``T(mu(x))`` (a flow has no closed-form mean)."""
        loc, scale = self.encoder(x)
        z = loc
        for transform in self.posterior(loc, scale).transforms:
            z = transform(z)
        return self.decode(z)
