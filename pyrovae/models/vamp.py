"""The VAE with a VampPrior: the prior is the guide's mixture at learned pseudo-inputs.

``p(z) = 1/K sum_k q(z | u_k)`` (Tomczak & Welling, AISTATS 2018): the encoder's Gaussian at
``K`` pseudo-inputs ``u_k``, images of the data's shape learned with the networks. The model
registers the encoder too (it defines the prior), and the pseudo-inputs as the module
``"pseudo_inputs"``. There is no closed-form ``KL(q || p)`` for a mixture prior: the KL term is
Monte Carlo, which :func:`pyrovae.elbo_terms` reports as ``kl_method`` ``"monte carlo"``.

Pseudo-inputs are kept in the data range [0, 1] by a hardtanh, as in the paper's code. They start at
``0.5 + 0.01 * noise``: the paper draws them from a narrow normal too, but the training data (which
its code can also copy from) are not known when the model is built, and 0.5 keeps every pixel
inside the range where the hardtanh passes gradients.

The prior is a :class:`~pyrovae.distributions.DiagNormalMixture`: it scores ``z`` against the
``K`` Gaussians by matrix products instead of a ``(..., K, z_dim)`` tensor, so the density costs
little beside the networks; what ``K`` adds to a step is the encoder's pass over the pseudo-inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae import checks
from pyrovae.distributions import DiagNormalMixture
from pyrovae.models.vae import VAE

__all__ = ["PseudoInputs", "VampVAE"]

COMPONENTS = 500  # K, the paper's choice for MNIST
MAX_COMPONENTS = 100_000  # every step encodes all K pseudo-inputs: beyond this, a typo


class PseudoInputs(nn.Module):
    """``K`` learned images ``(K, C, H, W)`` in [0, 1]."""

    def __init__(self, components: int, shape: Sequence[int]):
        super().__init__()
        self.raw = nn.Parameter(0.5 + 0.01 * torch.randn(components, *shape))

    def forward(self) -> torch.Tensor:
        return F.hardtanh(self.raw, 0.0, 1.0)


class VampVAE(VAE):
    """A VAE whose prior is the VampPrior over ``components`` pseudo-inputs (default 500); other
    arguments as :class:`~pyrovae.models.vae.VAE`."""

    name = "vamp"

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None,
                 components: int = COMPONENTS):
        components = checks.whole(components, checks.label("components", "--model vamp:components=K"),
                                  maximum=MAX_COMPONENTS)
        super().__init__(shape, z_dim, hidden, net, likelihood, obs_scale)
        self.pseudo_inputs = PseudoInputs(components, self.shape)
        self._spec["components"] = components

    def prior(self) -> DiagNormalMixture:
        """``p(z)``: uniform weights over the encoder's Gaussians at the pseudo-inputs, event ``(z_dim,)``."""
        loc, scale = self.encoder(self.pseudo_inputs())  # (K, z_dim) each
        return DiagNormalMixture(loc, scale)

    def model(self, x: torch.Tensor) -> None:
        """``z ~ VampPrior``, ``x ~ p(x | decoder(z))``; ``x`` of shape ``(N, C, H, W)``."""
        pyro.module("encoder", self.encoder)
        pyro.module("pseudo_inputs", self.pseudo_inputs)
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)
        prior = self.prior()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", prior)
            pyro.sample("obs", self.likelihood.distribution(self.decoder(z)).to_event(3), obs=x)
