"""Encoder and decoder networks: an MLP pair, a gated MLP pair and a convolutional pair.

``net="gated"`` is the MLP with every hidden layer a :class:`GatedDense` layer (Tomczak & Welling
2018, VampPrior, section 4; after Dauphin et al. 2017) instead of a linear layer and a softplus.
Encoders map images ``(..., C, H, W)`` to the guide's ``(loc, scale)``, each ``(..., z_dim)``;
decoders map codes ``(..., z_dim)`` to one unconstrained value per pixel ``(..., C, H, W)`` (logits
or means, read by the likelihood). Any number of leading batch dims is accepted, so vectorized
particles (``(K, N, z_dim)``) work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import PyrovaeError

NETS = ("mlp", "gated", "conv")
_MIN_SCALE = 1e-5  # keeps log q(z|x) finite when the encoder is very confident


class GatedDense(nn.Module):
    """``h = (W1 x + b1) * sigmoid(W2 x + b2)``: ``(..., d_in) -> (..., d_out)``; the gate decides,
    per unit and example, how much of the linear feature passes (Tomczak & Welling 2018)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.h = nn.Linear(d_in, d_out)
        self.g = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


def _hidden(sizes: Sequence[int], gated: bool) -> list[nn.Module]:
    """Hidden layers ``sizes[0] -> ... -> sizes[-1]``, each with its nonlinearity: linear + softplus,
    or a gated layer (its gate is the nonlinearity). Linear layers sit at even indices, as in
    :func:`_mlp`, so the MLP's state-dict keys are those of earlier versions."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [GatedDense(a, b)] if gated else [nn.Linear(a, b), nn.Softplus()]
    return layers


class GaussianMLP(nn.Module):
    """``(..., d_in) -> (loc, scale)``, each ``(..., d_out)``: dense hidden layers (softplus, or gated
    with ``gated=True``) and two linear heads, the scale through a softplus."""

    def __init__(self, d_in: int, hidden: Sequence[int], d_out: int, gated: bool = False):
        super().__init__()
        self.body = nn.Sequential(*_hidden([d_in, *hidden], gated))
        width = hidden[-1] if hidden else d_in
        self.loc = nn.Linear(width, d_out)
        self.scale = nn.Linear(width, d_out)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(h)
        return self.loc(h), F.softplus(self.scale(h)) + _MIN_SCALE


class MLPEncoder(GaussianMLP):
    """``(..., C, H, W) -> (loc, scale)``: flatten, dense hidden layers, two linear heads."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int], z_dim: int, gated: bool = False):
        super().__init__(int(torch.tensor(tuple(shape)).prod()), hidden, z_dim, gated)
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(x.reshape(*x.shape[: x.dim() - 3], -1))


class MLPDecoder(nn.Module):
    """``(..., z_dim) -> (..., C, H, W)``: dense hidden layers, one linear output per pixel."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int], z_dim: int, gated: bool = False):
        super().__init__()
        self.shape = tuple(shape)
        d = int(torch.tensor(self.shape).prod())
        sizes = [z_dim, *reversed(hidden)]
        self.net = nn.Sequential(*_hidden(sizes, gated), nn.Linear(sizes[-1], d))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], *self.shape)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (32, 64 channels), dense hidden layers, two heads.

    Needs H and W divisible by 4 (28x28, 8x8, 32x32...).
    """

    def __init__(self, shape: Sequence[int], hidden: Sequence[int], z_dim: int):
        super().__init__()
        c, h, w = shape
        self.shape = tuple(shape)
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
        )
        flat = 64 * (h // 4) * (w // 4)
        self.body = _mlp([flat, *hidden]) if hidden else nn.Sequential()
        width = hidden[-1] if hidden else flat
        self.loc = nn.Linear(width, z_dim)
        self.scale = nn.Linear(width, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[:-3]
        h = self.conv(x.reshape(-1, *self.shape)).flatten(1)
        if len(self.body):
            h = F.relu(self.body(h))
        h = h.reshape(*batch, -1)
        return self.loc(h), F.softplus(self.scale(h)) + _MIN_SCALE


class ConvDecoder(nn.Module):
    """Dense layers to a 64-channel map at 1/4 resolution, then two stride-2 transposed convs."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int], z_dim: int):
        super().__init__()
        c, h, w = shape
        self.shape = tuple(shape)
        self.grid = (64, h // 4, w // 4)
        flat = 64 * (h // 4) * (w // 4)
        self.dense = nn.Sequential(_mlp([z_dim, *reversed(hidden), flat]), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.dense(z.reshape(-1, z.shape[-1])).reshape(-1, *self.grid)
        return self.deconv(h).reshape(*batch, *self.shape)


def build_networks(
    net: str, shape: Sequence[int], hidden: Sequence[int], z_dim: int
) -> tuple[nn.Module, nn.Module]:
    """Build the ``(encoder, decoder)`` pair named ``net`` (``"mlp"``, ``"gated"`` or ``"conv"``)."""
    if net not in NETS:
        raise PyrovaeError(f"unknown --net {net!r}: choose one of {', '.join(NETS)}")
    if z_dim < 1:
        raise PyrovaeError(f"--z-dim must be >= 1, got {z_dim}")
    if any(h < 1 for h in hidden):
        raise PyrovaeError(f"--hidden sizes must be >= 1, got {list(hidden)}")
    if len(shape) != 3:
        raise PyrovaeError(f"images must be (C, H, W), got {tuple(shape)}")
    if net == "conv":
        if shape[1] % 4 or shape[2] % 4:
            raise PyrovaeError(
                f"--net conv needs image height and width divisible by 4, got {tuple(shape[1:])}: "
                "use --net mlp"
            )
        return ConvEncoder(shape, hidden, z_dim), ConvDecoder(shape, hidden, z_dim)
    gated = net == "gated"
    return MLPEncoder(shape, hidden, z_dim, gated), MLPDecoder(shape, hidden, z_dim, gated)
