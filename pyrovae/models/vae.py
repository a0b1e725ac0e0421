"""The built-in models: the VAE, and the auto-encoders as other guides on the same model.

Generative model ``p(z) p(x|z)`` with ``z ~ N(0, I)`` and a decoder network; amortized guide
``q(z|x) = N(mu(x), sigma(x))`` with an encoder network (Kingma & Welling 2014). Both share the
sample site ``"latent"`` inside ``pyro.plate("data")``; the model observes ``"obs"``. They take the
batch only: beta is applied from outside by :class:`pyrovae.infer.beta.KLWeight`, like for any
user model. The variants override one hook each:

* :class:`AutoEncoder` -- a point-code guide ``Delta(mu(x))`` and no prior term (the latent site is
  weighted 0 in model and guide), so the ELBO is the reconstruction log-likelihood.
* :class:`DenoisingAutoEncoder` -- the same with a corrupting guide: it encodes ``x~``, a corrupted
  copy of ``x`` (:mod:`pyrovae.data.corruption`), while the model still observes the clean ``x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.data.corruption import parse_noise
from pyrovae.infer.beta import kl_weight
from pyrovae.nn.likelihoods import build_likelihood
from pyrovae.nn.nets import build_networks

__all__ = ["VAE", "AutoEncoder", "DenoisingAutoEncoder"]


class VAE(nn.Module):
    """A VAE over images of shape ``shape = (C, H, W)`` with a ``z_dim``-dimensional latent.

    ``net`` is ``"mlp"`` or ``"conv"``; ``hidden`` lists the dense hidden sizes (encoder order);
    ``likelihood`` names the observation model (see :mod:`pyrovae.nn.likelihoods`) and ``obs_scale``
    its fixed scale (``None`` learns it, for ``gaussian`` and ``laplace``).
    """

    name = "vae"

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.z_dim = int(z_dim)
        self.encoder, self.decoder = build_networks(net, self.shape, list(hidden), self.z_dim)
        self.likelihood = build_likelihood(likelihood, obs_scale)
        self._likelihood_has_params = any(True for _ in self.likelihood.parameters())
        self.register_buffer("prior_loc", torch.zeros(self.z_dim))
        self.register_buffer("prior_scale", torch.ones(self.z_dim))
        self._spec = {"model": self.name, "shape": list(self.shape), "z_dim": self.z_dim,
                      "hidden": [int(h) for h in hidden], "net": net, "likelihood": likelihood,
                      "obs_scale": obs_scale}

    @property
    def spec(self) -> dict[str, Any]:
        """The constructor's arguments as plain data (stored in checkpoints), with the model name."""
        return dict(self._spec)

    # ---- the Pyro program ----------------------------------------------------------------------

    def model(self, x: torch.Tensor) -> None:
        """``z ~ N(0, I)``, ``x ~ p(x | decoder(z))``; ``x`` of shape ``(N, C, H, W)``."""
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            pyro.sample("obs", self.likelihood.distribution(self.decoder(z)).to_event(3), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """``z ~ q(z | x)`` from the encoder; ``x`` of shape ``(N, C, H, W)``."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(self.encoder_input(x))
            pyro.sample("latent", self.posterior(loc, scale))

    # ---- the hooks the variants override -------------------------------------------------------

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of ``x`` (the VAE: ``x`` itself)."""
        return x

    def posterior(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        """The guide's distribution from the encoder's outputs: ``N(loc, scale)``, event dim 1."""
        return dist.Normal(loc, scale).to_event(1)

    # ---- deterministic helpers -----------------------------------------------------------------

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images ``E[x | z]`` in [0, 1], ``(..., C, H, W)``, for codes ``(..., z_dim)``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each image: ``(N, C, H, W) -> (N, C, H, W)``."""
        return self.decode(self.encoder(x)[0])


class AutoEncoder(VAE):
    """A deterministic auto-encoder in the same Pyro program: the guide's latent is the point code
    ``Delta(mu(x))`` and the latent site is weighted 0 (no prior term), so the objective is the
    reconstruction log-likelihood (cross-entropy, squared or absolute error)."""

    name = "ae"

    def model(self, x: torch.Tensor) -> None:
        with kl_weight(0.0):
            super().model(x)

    def guide(self, x: torch.Tensor) -> None:
        with kl_weight(0.0):
            super().guide(x)

    def posterior(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(loc).to_event(1)


class DenoisingAutoEncoder(AutoEncoder):
    """An auto-encoder whose guide encodes a corrupted copy of ``x`` while training (Vincent et al.
    2008); ``noise`` is ``gaussian:STD`` or ``mask:PROB`` (default ``gaussian:0.3``)."""

    name = "dae"

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None,
                 noise: str | None = None):
        super().__init__(shape, z_dim, hidden, net, likelihood, obs_scale)
        self.corruption = parse_noise(noise or "gaussian:0.3")
        self._spec["noise"] = self.corruption.spec

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.corruption(x) if self.training else x
