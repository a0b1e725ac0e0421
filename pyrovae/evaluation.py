"""Held-out evaluation of a VAE: ELBO and its parts, importance-sampled ``log p(x)``, active units.

All numbers are per example, in nats. Every function takes a model and tensors (never a trainer)
and runs the VAE's own Pyro model and guide under ``poutine.trace``.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from .errors import PyrovaeError
from .vae import LATENT, OBS, VAE

# Largest decoder output (elements) held at once when estimating log p(x): bounds memory.
MAX_ELEMENTS = 1 << 24


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


@torch.no_grad()
def elbo_terms(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean ELBO, reconstruction ``E_q[log p(x|z)]`` (one draw) and closed-form KL, per example.

    ``x``: images ``(N, C, H, W)``. The KL is ``KL(q(z|x) || p(z))`` of the two Gaussians. An
    auto-encoder has no ELBO: its ``elbo`` and ``kl`` are ``None`` and ``recon`` is the
    log-likelihood of ``x`` under the decoding of its point code.
    """
    # sums stay on the device and are read once at the end: no host sync per batch
    recon = torch.zeros((), dtype=torch.float64, device=x.device)
    kl = torch.zeros_like(recon)
    with pyro.validation_enabled(False):
        for s in _batches(len(x), batch_size):
            guide_tr = poutine.trace(vae.guide).get_trace(x[s])
            model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x[s])
            obs = model_tr.nodes[OBS]
            recon += obs["fn"].log_prob(obs["value"]).sum()
            if not vae.point_code:
                q, p = guide_tr.nodes[LATENT]["fn"], model_tr.nodes[LATENT]["fn"]
                kl += kl_divergence(q, p).sum()
    n, recon, kl = len(x), recon.item(), kl.item()
    if vae.point_code:
        return {"elbo": None, "recon": recon / n, "kl": None}
    return {"elbo": (recon - kl) / n, "recon": recon / n, "kl": kl / n}


@torch.no_grad()
def log_weights(vae: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` for ``k`` draws per example: shape ``(k, N)``.

    Vectorized: one ``pyro.plate("particles", k)`` outside the model's data plate.
    """

    def particles(fn):
        def wrapped(x):
            with pyro.plate("particles", k, dim=-2):
                fn(x)

        return wrapped

    with pyro.validation_enabled(False):
        guide_tr = poutine.trace(particles(vae.guide)).get_trace(x)
        model_tr = poutine.trace(poutine.replay(particles(vae.model), trace=guide_tr)).get_trace(x)
    z = guide_tr.nodes[LATENT]["value"]
    obs = model_tr.nodes[OBS]
    return (
        obs["fn"].log_prob(obs["value"])
        + model_tr.nodes[LATENT]["fn"].log_prob(z)
        - guide_tr.nodes[LATENT]["fn"].log_prob(z)
    )


@torch.no_grad()
def log_likelihood(vae: VAE, x: torch.Tensor, k: int = 1000, max_elements: int = MAX_ELEMENTS
                   ) -> torch.Tensor:
    """Importance-sampled estimate of ``log p(x)`` per example, ``(N,)``, with ``k`` samples.

    ``logmeanexp_k [log p(x, z_k) - log q(z_k | x)]`` with ``z_k ~ q(z|x)`` (Burda et al. 2016):
    a lower bound in expectation that tightens as ``k`` grows (``k = 1`` is the ELBO). Data and
    samples are processed in chunks of at most ``max_elements`` decoder outputs.
    """
    if vae.point_code:
        raise PyrovaeError("an auto-encoder (--model ae/dae) defines no likelihood p(x) to "
                           "estimate: evaluate a --model vae run, or compare reconstructions")
    if not isinstance(k, int) or k < 1:
        raise PyrovaeError(
            f"the number of importance samples K must be a whole number >= 1, got {k}")
    pixels = math.prod(vae.shape)
    per_example = max(1, max_elements // (pixels * k))  # examples per chunk with all k at once
    k_chunk = k if per_example > 1 else max(1, max_elements // pixels)
    out = torch.empty(len(x), device=x.device)
    for s in _batches(len(x), per_example):
        parts = [log_weights(vae, x[s], min(k_chunk, k - j)) for j in range(0, k, k_chunk)]
        out[s] = torch.logsumexp(torch.cat(parts), dim=0) - math.log(k)
    return out


@torch.no_grad()
def active_units(vae: VAE, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 1000
                 ) -> int:
    """Latent dims whose posterior mean varies over the data: ``Var_x E_q[z_d] > threshold``.

    Burda et al. 2016, section 5.2.
    """
    loc = torch.cat([vae.encode(x[s])[0] for s in _batches(len(x), batch_size)])
    return int((loc.var(dim=0) > threshold).sum())


def evaluate(vae: VAE, x: torch.Tensor, iwae_k: int | None = None, batch_size: int = 1000,
             seed: int = 0) -> dict[str, float]:
    """Held-out summary: ELBO, recon, KL, active units and (with ``iwae_k``) ``log p(x)``.

    Seeds Pyro's generators with ``seed`` so the Monte Carlo estimates are reproducible.
    """
    if len(x) == 0:
        raise PyrovaeError("cannot evaluate on an empty set of images")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise PyrovaeError(f"--seed must be a whole number in [0, 2**32), got {seed}")
    vae.eval()
    pyro.set_rng_seed(seed)
    result = {"n": len(x), **elbo_terms(vae, x, batch_size)}
    result["active_units"] = active_units(vae, x, batch_size=batch_size)
    if iwae_k and not vae.point_code:
        result["iwae_k"] = iwae_k
        result["log_px"] = log_likelihood(vae, x, iwae_k).mean().item()
    return result
