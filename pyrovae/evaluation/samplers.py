"""Latent codes for generation from training codes, by sampler name: ``aggregate``, ``gmm``.

Decode the codes with ``model.decode(z)`` (the built-ins) to get images. Samples from the prior
itself come from :func:`pyrovae.evaluation.generate.sample`, which runs the model's own prior; the
samplers here replace the prior by a distribution fitted to the training set's codes:

- ``aggregate``: the aggregate posterior ``q(z) = (1/N) sum_i q(z | x_i)`` over the training set, a
  mixture of N diagonal Gaussians (Makhzani et al. 2016; Hoffman & Johnson 2016): one uniform
  component index per draw, then ``loc[i] + scale[i] * eps``, vectorized. With point codes
  (``scale=None`` or zeros, an auto-encoder) it resamples the training codes themselves.
- ``gmm``: a full-covariance Gaussian mixture fitted by EM (scikit-learn) on the training codes
  ``loc``, then sampled: the usual way to generate from a deterministic auto-encoder (Ghosh et al.
  2020, "From variational to deterministic autoencoders").

``loc`` and ``scale`` are the training set's posterior means and scales, ``(N, z_dim)`` each, as
returned by :func:`pyrovae.encode`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovae.errors import PyrovaeError

# every sampler: (n, loc, scale, z_dim, generator, gmm_components) -> codes (n, z_dim)
Sampler = Callable[..., torch.Tensor]


def _aggregate(n, loc, scale, z_dim, gen, gmm_components) -> torch.Tensor:
    index = torch.randint(len(loc), (n,), generator=gen).to(loc.device)
    z = loc[index]
    if scale is not None:
        eps = torch.randn(n, z_dim, generator=gen, dtype=loc.dtype).to(loc.device)
        z = z + scale[index] * eps
    return z


def _gmm(n, loc, scale, z_dim, gen, gmm_components) -> torch.Tensor:
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    seed = int(torch.randint(2**31 - 1, (), generator=gen))
    codes = loc.detach().double().cpu().numpy()
    gmm = GaussianMixture(min(gmm_components, len(codes)), covariance_type="full",
                          random_state=seed)
    # EM on (N, z_dim) codes is small: BLAS/OpenMP threads next to torch's only contend for the
    # cores (5,000 x 16 codes, 10 components: 19 s with threads, 1 s without, on 2 busy cores)
    with threadpool_limits(1):
        gmm.fit(codes)
        z, _ = gmm.sample(n)
    # scikit-learn returns the draws grouped by component: shuffle so any prefix is a fair sample
    z = torch.as_tensor(z, dtype=loc.dtype)[torch.randperm(n, generator=gen)]
    return z.to(loc.device)


SAMPLERS: dict[str, Sampler] = {"aggregate": _aggregate, "gmm": _gmm}
NEEDS_TRAINING_CODES = frozenset(SAMPLERS)
SAMPLER_NAMES = ("prior", *SAMPLERS)  # what the commands offer: the model's prior, then these


def sample_codes(
    name: str,
    n: int,
    loc: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    *,
    z_dim: int | None = None,
    seed: int | None = None,
    gmm_components: int = 10,
) -> torch.Tensor:
    """``n`` latent codes ``(n, z_dim)`` from the sampler ``name`` (see the module docstring).

    ``loc``/``scale``: the training codes ``(N, z_dim)`` that ``aggregate`` and ``gmm`` need
    (``scale=None`` means point codes); ``z_dim``, if given, must match them. ``seed`` makes the
    draw repeatable (``None``: drawn from torch's global generator, so ``torch.manual_seed`` also
    fixes it). ``gmm_components`` is capped at N. Codes are on ``loc``'s device with its dtype.
    """
    sampler = SAMPLERS.get(name)
    if name == "prior":
        raise PyrovaeError("the prior is sampled by running the model: use pyrovae.sample(model, n) "
                           "(the samplers here draw codes fitted to the training set)")
    if sampler is None:
        raise PyrovaeError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLER_NAMES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PyrovaeError(f"the number of samples must be an integer >= 1, got {n!r}")
    if gmm_components < 1:
        raise PyrovaeError(f"gmm_components must be >= 1, got {gmm_components}")
    if loc is None:
        raise PyrovaeError(
            f"this run has no training data to build the aggregate posterior from: sampler "
            f"{name!r} needs the training set's codes (pass loc, scale = "
            f"pyrovae.encode(model, data.train_x)), or use --sampler prior"
        )
    z_dim = _check_codes(loc, scale, z_dim)
    if seed is None:
        seed = int(torch.randint(2**62, ()))
    gen = torch.Generator().manual_seed(seed)
    return sampler(n, loc, scale, int(z_dim), gen, int(gmm_components))


def _check_codes(loc: torch.Tensor, scale: torch.Tensor | None, z_dim: int | None) -> int:
    """Validate the training codes and return their latent size."""
    if loc.dim() != 2 or len(loc) == 0:
        raise PyrovaeError(f"training codes must have shape (N, z_dim) with N > 0, "
                           f"got {tuple(loc.shape)}")
    if z_dim is not None and z_dim != loc.shape[1]:
        raise PyrovaeError(f"z_dim={z_dim} does not match the training codes' {loc.shape[1]}")
    if not torch.isfinite(loc).all():
        raise PyrovaeError("the training codes contain NaN or inf values")
    if scale is not None:
        if scale.shape != loc.shape:
            raise PyrovaeError(f"scale has shape {tuple(scale.shape)}, loc {tuple(loc.shape)}: "
                               "they must match")
        if not (torch.isfinite(scale).all() and (scale >= 0).all()):
            raise PyrovaeError("posterior scales must be finite and >= 0")
    return int(loc.shape[1])
