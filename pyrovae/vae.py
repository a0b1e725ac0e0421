"""The VAE as a Pyro model/guide pair.

Generative model ``p(z) p(x|z)`` with ``z ~ N(0, I)`` and a decoder network; amortized guide
``q(z|x) = N(mu(x), sigma(x))`` with an encoder network. Both share the sample site ``"latent"``
inside ``pyro.plate("data")``; the model observes ``"obs"``. ``beta`` weights the latent site
(``log p(z) - log q(z|x)``, the KL part of the ELBO) through ``pyro.poutine.scale`` in both.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .corruption import parse_noise
from .errors import PyrovaeError
from .likelihoods import build_likelihood
from .nets import build_networks

LATENT, OBS, PLATE = "latent", "obs", "data"


def kl_weight(beta: float | torch.Tensor):
    """Handler that scales the latent site's log-densities by ``beta``.

    ``poutine.scale`` rejects 0, yet KL schedules start there: ``beta == 0`` masks the site instead,
    so ``log p(z) - log q(z|x)`` leaves both the loss and the gradient while ``z`` is still drawn
    (reparameterized) for the reconstruction term. A tensor ``beta`` (kept on the device so it can
    change without recompiling) is applied as a scale with no host-side check, 0 included.
    """
    if isinstance(beta, torch.Tensor):
        with pyro.validation_enabled(False):
            return poutine.scale(scale=beta)
    if not (beta >= 0 and math.isfinite(beta)):
        raise PyrovaeError(f"beta must be a finite number >= 0, got {beta}")
    if beta == 1:
        return contextlib.nullcontext()
    if beta == 0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


MODELS = ("vae", "ae", "dae")


class VAE(nn.Module):
    """A VAE over images of shape ``shape = (C, H, W)`` with a ``z_dim``-dimensional latent.

    ``net`` is ``"mlp"`` or ``"conv"``; ``hidden`` lists the dense hidden sizes (encoder order);
    ``likelihood`` names the observation model (see :mod:`pyrovae.likelihoods`) and ``obs_scale``
    its fixed scale (``None`` learns it, for ``gaussian`` and ``laplace``).

    ``model="ae"`` makes it a deterministic auto-encoder in the same Pyro program: the guide's
    latent is a point code ``Delta(mu(x))`` and the latent site is masked in model and guide (no
    prior term), so the ELBO reduces to the reconstruction log-likelihood (cross-entropy, squared
    or absolute error). ``model="dae"`` is the denoising variant: the guide encodes a corrupted
    ``x~`` (``noise``, see :mod:`pyrovae.corruption`) while the model still observes the clean x.
    """

    def __init__(
        self,
        shape: Sequence[int],
        z_dim: int = 16,
        hidden: Sequence[int] = (400,),
        net: str = "mlp",
        likelihood: str = "bernoulli",
        obs_scale: float | None = None,
        model: str = "vae",
        noise: str | None = None,
    ):
        super().__init__()
        if model not in MODELS:
            raise PyrovaeError(f"unknown --model {model!r}: choose one of {', '.join(MODELS)}")
        if noise is not None and model != "dae":
            raise PyrovaeError(f"--noise applies to --model dae only, not {model}")
        self.point_code = model in ("ae", "dae")
        self.corruption = parse_noise(noise or "gaussian:0.3") if model == "dae" else None
        self.shape = tuple(int(s) for s in shape)
        self.z_dim = int(z_dim)
        self.encoder, self.decoder = build_networks(net, self.shape, list(hidden), self.z_dim)
        self.likelihood = build_likelihood(likelihood, obs_scale)
        self._likelihood_has_params = any(True for _ in self.likelihood.parameters())
        self.register_buffer("prior_loc", torch.zeros(self.z_dim))
        self.register_buffer("prior_scale", torch.ones(self.z_dim))
        self.spec = {
            "shape": list(self.shape), "z_dim": self.z_dim, "hidden": [int(h) for h in hidden],
            "net": net, "likelihood": likelihood, "obs_scale": obs_scale, "model": model,
            "noise": self.corruption.spec if self.corruption else None,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> VAE:
        """Rebuild a VAE from :attr:`spec` (plain data, as stored in a checkpoint)."""
        return cls(**spec)

    # ---- the Pyro program ----------------------------------------------------------------------

    def model(self, x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> None:
        """``z ~ N(0, I)``, ``x ~ p(x | decoder(z))``; ``x`` of shape ``(N, C, H, W)``."""
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)
        with pyro.plate(PLATE, x.shape[0]):
            with self._latent_weight(beta):
                prior = dist.Normal(self.prior_loc, self.prior_scale).to_event(1)
                z = pyro.sample(LATENT, prior)
            out = self.decoder(z)
            pyro.sample(OBS, self.likelihood.distribution(out).to_event(3), obs=x)

    def guide(self, x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> None:
        """``z ~ N(mu(x), sigma(x))`` from the encoder; ``x`` of shape ``(N, C, H, W)``."""
        pyro.module("encoder", self.encoder)
        with pyro.plate(PLATE, x.shape[0]):
            if self.corruption is not None and self.training:
                x = self.corruption(x)
            loc, scale = self.encoder(x)
            with self._latent_weight(beta):
                if self.point_code:
                    pyro.sample(LATENT, dist.Delta(loc).to_event(1))
                else:
                    pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))

    def _latent_weight(self, beta):
        # an auto-encoder has no prior term: its latent site is masked whatever beta is
        return poutine.mask(mask=False) if self.point_code else kl_weight(beta)

    # ---- deterministic helpers for users -------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and scales ``(N, z_dim)`` each, for images ``(N, C, H, W)``.

        An auto-encoder's codes are points: its scales are zeros.
        """
        loc, scale = self.encoder(x)
        return (loc, torch.zeros_like(loc)) if self.point_code else (loc, scale)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images ``E[x | z]`` in [0, 1], ``(..., C, H, W)``, for codes ``(..., z_dim)``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each image: ``(N, C, H, W) -> (N, C, H, W)``."""
        return self.decode(self.encoder(x)[0])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images of ``n`` codes drawn from the prior ``N(0, I)``: ``(n, C, H, W)``."""
        device = generator.device if generator is not None else self.prior_loc.device
        z = torch.randn(n, self.z_dim, generator=generator, device=device)
        return self.decode(z.to(self.prior_loc.device))


def encode(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and scales ``(N, z_dim)`` of images ``(N, C, H, W)``, in batches."""
    vae.eval()
    parts = [vae.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def sample(vae: VAE, n: int = 64, seed: int | None = None) -> torch.Tensor:
    """``n`` mean images ``(n, C, H, W)`` decoded from prior draws (repeatable with ``seed``)."""
    if n < 1:
        raise PyrovaeError(f"the number of samples must be >= 1, got {n}")
    vae.eval()
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return vae.sample(n, gen)
