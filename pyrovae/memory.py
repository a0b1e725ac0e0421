"""Rough memory needs of a request, checked before anything is allocated.

A request that cannot fit (``--hidden 1000000000``, ``--particles 100000000``, ``sample --n
100000000``) fails with one message naming the option to lower, instead of an allocator error deep
inside torch (or the system killing the process). The estimates are rough upper-ish figures for
the dense networks (float32): what matters is catching requests that are off by orders of
magnitude, not predicting the last megabyte.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from pyrovae import checks
from pyrovae.errors import PyrovaeError

__all__ = ["MAX_PARTICLES", "available_bytes", "check_memory", "check_sample", "check_training",
           "sample_bytes", "training_bytes"]

MAX_PARTICLES = 1_000_000  # samples per example per step (particles, or K of iwae:K): beyond is absurd
_FLOAT = 4  # bytes per float32
_OPTIMIZER = 4  # weights, gradients and Adam's two moments
_SAVED = 3  # activations autograd keeps per layer (input, pre-activation, output)
_TYPICAL = {"hidden": [400], "z_dim": 32, "particles": 1, "batch_size": 128}  # to name the culprit


def available_bytes(device: Any = "cpu") -> int:
    """Free memory of ``device``: the GPU's free memory for a CUDA device, else the host's
    available memory (``MemAvailable`` of ``/proc/meminfo``, or the physical memory)."""
    import torch

    name = str(device)
    if name.startswith("cuda") and torch.cuda.is_available():
        try:
            return int(torch.cuda.mem_get_info(torch.device(name))[0])
        except (RuntimeError, ValueError, AssertionError):
            pass  # an index that does not exist: the device check reports it
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not refuse


def training_bytes(pixels: int, hidden: Sequence[int], z_dim: int, batch: int, particles: int,
                   gated: bool = False) -> int:
    """Bytes one training step of the dense encoder/decoder pair needs: parameters with their
    gradients and Adam state, plus the activations autograd keeps (the encoder runs once per
    example, the decoder once per example and particle). Python integers: never overflows."""
    widths = [int(pixels), *(int(h) for h in hidden)]
    layers = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    heads = widths[-1] * 2 * z_dim  # loc and scale
    decoder = sum(a * b + b for a, b in zip([z_dim, *widths[:0:-1]], [*widths[:0:-1], pixels],
                                            strict=True))
    params = (layers + heads) * (2 if gated else 1) + decoder * (2 if gated else 1)
    encoder_act = batch * (sum(widths) + 2 * z_dim)
    decoder_act = batch * particles * (z_dim + sum(widths[1:]) + 2 * pixels)
    return params * _FLOAT * _OPTIMIZER + (encoder_act + decoder_act) * _FLOAT * _SAVED


def sample_bytes(n: int, pixels: int, hidden: Sequence[int] = (), z_dim: int = 0) -> int:
    """Bytes ``n`` prior samples need: the inputs, codes, decoder layers and images."""
    return n * (2 * pixels + z_dim + sum(int(h) for h in hidden)) * _FLOAT * 2


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**70 else f"{n / 2**30:.2g} GiB"


def _refuse(needed: int, free: int, culprit: str, flag: str | None = None) -> PyrovaeError:
    return PyrovaeError(f"this needs about {_gib(needed)} of memory, {_gib(free)} available: lower "
                        f"{checks.label(culprit, flag)}")


def check_training(*, pixels: int, hidden: Sequence[int], z_dim: int, batch_size: int,
                   particles: int, gated: bool = False, device: Any = "cpu",
                   particle_option: str = "particles") -> None:
    """Refuse a training step that cannot fit in ``device``'s free memory, naming the option whose
    usual value (hidden 400, z_dim 32, one particle, batch 128) would save the most memory.

    ``particle_option``: what set the particle count (``"particles"``, or ``"estimator"`` for the
    ``K`` of ``iwae:K``), so the message names what the user typed.
    """
    sizes = {"hidden": list(hidden), "z_dim": z_dim, "particles": particles, "batch_size": batch_size}

    def need(**change: Any) -> int:
        s = {**sizes, **change}
        return training_bytes(pixels, s["hidden"], s["z_dim"], s["batch_size"], s["particles"], gated)

    needed, free = need(), available_bytes(device)
    if needed <= free:
        return
    saved = {k: needed - need(**{k: v}) for k, v in _TYPICAL.items()}
    culprit = max(saved, key=saved.__getitem__)
    raise _refuse(needed, free, particle_option if culprit == "particles" else culprit)


def check_memory(config: Any, shape: Sequence[int], n_train: int | None = None) -> None:
    """:func:`check_training` for a resolved :class:`~pyrovae.training.config.TrainConfig` and
    images of ``shape``; ``n_train`` (the training examples) caps the batch."""
    from pyrovae.infer.registry import make_elbo

    particles = make_elbo(config.estimator, config.particles).num_particles
    batch = config.batch_size if n_train is None else max(1, min(config.batch_size, n_train))
    option = "particles" if particles == config.particles else "estimator"
    check_training(pixels=math.prod(int(s) for s in shape), hidden=config.hidden,
                   z_dim=config.z_dim, batch_size=batch, particles=particles,
                   gated=config.net == "gated", device=config.device, particle_option=option)


def check_sample(n: int, pixels: int, hidden: Sequence[int] = (), z_dim: int = 0,
                 device: Any = "cpu") -> None:
    """Refuse ``n`` samples of ``pixels`` values each that cannot fit (naming ``n``, ``--n``)."""
    needed, free = sample_bytes(n, pixels, hidden, z_dim), available_bytes(device)
    if needed > free:
        raise _refuse(needed, free, "n")
