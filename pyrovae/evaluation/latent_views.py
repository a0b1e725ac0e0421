"""Latent-space views as rows of codes: interpolation between two codes, traversals per dimension.

Pure tensor functions; decoding and plotting are the caller's. For a grid with one view per row::

    z = interpolate(loc[0], loc[1], steps=10, mode="spherical")     # (10, z_dim)
    fig = pyrovae.plots.plot_images(vae.decode(z), "interpolation", nrow=10)
    z = traversal(loc[0], span=3.0, steps=7)                        # (z_dim * 7, z_dim)
    fig = pyrovae.plots.plot_images(vae.decode(z), "traversals", nrow=7)   # row d: dimension d
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pyrovae.errors import PyrovaeError

# below this sine of the angle between the two codes, slerp's weights are 0/0: fall back to lerp
_PARALLEL_SIN = 1e-6


def _linear(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (1 - t) * z0 + t * z1


def _spherical(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    n0, n1 = z0.norm(), z1.norm()
    if n0 == 0 or n1 == 0:
        return _linear(z0, z1, t)
    cos = (torch.dot(z0, z1) / (n0 * n1)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if sin < _PARALLEL_SIN:  # (anti)parallel: no unique great circle through both codes
        return _linear(z0, z1, t)
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / sin


INTERPOLATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": _linear,
    "spherical": _spherical,
}


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int = 10,
                mode: str = "linear") -> torch.Tensor:
    """``steps`` codes ``(steps, z_dim)`` from ``z0`` to ``z1`` (each ``(z_dim,)``), both included.

    ``linear``: ``(1 - t) z0 + t z1`` at ``t = 0, 1/(steps-1), ..., 1``. ``spherical``: slerp
    (Shoemake 1985), ``[sin((1-t) w) z0 + sin(t w) z1] / sin w`` with ``w`` the angle between the
    codes: it keeps codes at the radius typical of ``N(0, I)`` where the linear path passes close to
    the origin (White 2016, "Sampling generative networks"); it falls back to linear when the codes
    are (anti)parallel or one is zero. The first and last rows are exactly ``z0`` and ``z1``.
    """
    fn = INTERPOLATIONS.get(mode)
    if fn is None:
        raise PyrovaeError(f"unknown interpolation {mode!r}: choose one of "
                           f"{', '.join(INTERPOLATIONS)}")
    if z0.dim() != 1 or z0.shape != z1.shape:
        raise PyrovaeError(f"interpolate needs two codes of the same shape (z_dim,), got "
                           f"{tuple(z0.shape)} and {tuple(z1.shape)}")
    if steps < 2:
        raise PyrovaeError(f"an interpolation needs steps >= 2 (the two ends), got {steps}")
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device).unsqueeze(1)
    z = fn(z0, z1, t)
    z[0], z[-1] = z0, z1  # exact ends, whatever the rounding of the weights
    return z


def traversal(z: torch.Tensor, dims: Sequence[int] | None = None, span: float = 3.0,
              steps: int = 7, relative: bool = False) -> torch.Tensor:
    """Codes ``(len(dims) * steps, z_dim)`` that change one latent dimension at a time from ``z``.

    Block ``k`` (rows ``k*steps`` to ``(k+1)*steps - 1``) equals ``z`` except dimension
    ``dims[k]``, which takes ``steps`` evenly spaced values from ``-span`` to ``+span``: absolute
    values by default (``N(0, 1)``'s range, as in beta-VAE traversals, Higgins et al. 2017), or
    offsets added to ``z[d]`` with ``relative=True``. ``dims=None`` means every dimension.
    """
    if z.dim() != 1:
        raise PyrovaeError(f"traversal needs one code of shape (z_dim,), got {tuple(z.shape)}")
    z_dim = z.shape[0]
    dims = list(range(z_dim)) if dims is None else [int(d) for d in dims]
    if not dims or any(not 0 <= d < z_dim for d in dims):
        raise PyrovaeError(f"traversal dims must be a non-empty list in 0..{z_dim - 1}, got {dims}")
    if steps < 2 or not span > 0:
        raise PyrovaeError(f"traversal needs steps >= 2 and span > 0, got {steps} and {span}")
    values = torch.linspace(-span, span, steps, dtype=z.dtype, device=z.device)
    codes = z.repeat(len(dims) * steps, 1)
    rows = torch.arange(len(dims) * steps, device=z.device)
    cols = torch.tensor(dims, device=z.device).repeat_interleave(steps)
    base = codes[rows, cols] if relative else 0
    codes[rows, cols] = base + values.repeat(len(dims))
    return codes
