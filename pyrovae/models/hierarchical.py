"""A VAE with two stochastic layers, ``z2 -> z1 -> x``, as in the IWAE paper's two-layer model.

Model ``p(z2) p(z1 | z2) p(x | z1)`` with ``z2 ~ N(0, I)``, ``p(z1 | z2)`` a Gaussian from a small
MLP, and the VAE's decoder and likelihood for ``x``. Guide ``q(z1 | x) q(z2 | z1)``: the VAE's
encoder for ``z1`` and a small MLP for ``z2`` (Burda, Grosse & Salakhutdinov 2016). The
sites are ``"z1"`` and ``"z2"``, in the plate ``"data"``.

Sizes: ``z1`` (default ``z_dim``) and ``z2`` (default ``max(1, z1 // 2)``; the paper uses 100 and 50).
The two small MLPs have one hidden layer of ``2 * z1`` units (gated when ``net="gated"``). The
guide's ``z2`` depends on ``z1``, so estimators that need independent guide sites (``stl``,
``dreg``, ``meanfield``) refuse this model; ``trace``, ``tracegraph``, ``iwae:K`` and ``renyi`` fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyrovae import checks
from pyrovae.models.vae import VAE
from pyrovae.nn.nets import GaussianMLP

__all__ = ["HierarchicalVAE"]


class HierarchicalVAE(VAE):
    """Two latent layers of sizes ``z1`` and ``z2`` (see the module docstring); other arguments as
    :class:`~pyrovae.models.vae.VAE`. ``decode``/``reconstruct`` act on ``z1``."""

    name = "hvae"

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None,
                 z1: int | None = None, z2: int | None = None):
        z1 = checks.whole(z_dim if z1 is None else z1, checks.label("z1", "--model hvae:z1=D"))
        z2 = checks.whole(max(1, z1 // 2) if z2 is None else z2, checks.label("z2", "--model hvae:z2=D"))
        super().__init__(shape, z1, hidden, net, likelihood, obs_scale)
        gated = net == "gated"
        self.p_z1 = GaussianMLP(z2, [2 * z1], z1, gated)
        self.q_z2 = GaussianMLP(z1, [2 * z1], z2, gated)
        self.z2_dim = z2
        self.prior_loc = torch.zeros(z2)  # p(z2); the buffers keep their names
        self.prior_scale = torch.ones(z2)
        self._spec.update(z_dim=int(z_dim), z1=z1, z2=z2)

    def model(self, x: torch.Tensor) -> None:
        """``z2 ~ N(0, I)``, ``z1 ~ p(z1 | z2)``, ``x ~ p(x | decoder(z1))``."""
        pyro.module("p_z1", self.p_z1)
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(*self.p_z1(z2)).to_event(1))
            pyro.sample("obs", self.likelihood.distribution(self.decoder(z1)).to_event(3), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """``z1 ~ q(z1 | x)``, ``z2 ~ q(z2 | z1)``."""
        pyro.module("encoder", self.encoder)
        pyro.module("q_z2", self.q_z2)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.posterior(*self.encoder(self.encoder_input(x))))
            pyro.sample("z2", dist.Normal(*self.q_z2(z1)).to_event(1))
