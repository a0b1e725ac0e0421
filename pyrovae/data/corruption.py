"""Input corruption for denoising auto-encoders: ``x~ = x + noise`` or masked pixels.

Specs: ``gaussian:S`` adds ``N(0, S^2)`` noise to every pixel (values may leave [0, 1]);
``mask:P`` sets each pixel to 0 with probability P (Vincent et al. 2008).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyrovae.errors import PyrovaeError

KINDS = ("gaussian", "mask")


@dataclass(frozen=True)
class Corruption:
    kind: str
    level: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of ``x`` (any shape), drawn from torch's global generator."""
        if self.kind == "gaussian":
            return x + self.level * torch.randn_like(x)
        keep = torch.rand_like(x) >= self.level
        return x * keep

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.level:g}"


def parse_noise(spec: str) -> Corruption:
    """``"gaussian:0.3"`` or ``"mask:0.5"`` -> :class:`Corruption`, with clear errors."""
    kind, sep, level = spec.partition(":")
    if sep and not level.strip():
        raise PyrovaeError(f"--noise {spec!r}: give a level after the colon, e.g. {kind}:0.3")
    if kind not in KINDS:
        raise PyrovaeError(f"unknown --noise {spec!r}: write gaussian:STD or mask:PROB, e.g. "
                           "gaussian:0.3")
    try:
        value = float(level) if level else (0.3 if kind == "gaussian" else 0.25)
    except ValueError:
        raise PyrovaeError(f"--noise {spec!r}: the level must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise PyrovaeError(f"--noise {spec!r}: the noise level must be >= 0, got {value}")
    if kind == "mask" and value >= 1:
        raise PyrovaeError(f"--noise {spec!r}: a masking probability must be below 1")
    return Corruption(kind, value)
