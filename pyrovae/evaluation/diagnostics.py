"""Gradient diagnostics at fixed parameters: how noisy is each estimator's gradient?

The signal-to-noise ratio of a gradient coordinate is ``|E[g]| / std[g]`` (Rainforth et al.,
"Tighter variational bounds are not necessarily better", ICML 2018).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pyro.infer
import torch

__all__ = ["gradient_draws", "gradient_stats", "param_groups"]


def param_groups(model: Any, batch: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """``{"guide": ..., "model": ...}``: the trainable tensors each program uses (a tensor both use
    counts as the guide's), found from one trace of each on ``batch``. ``pyro.param`` tensors are
    those of the param store in use: call it and the gradient functions in the same store (as
    :func:`pyrovae.gradient_report` does, under :func:`pyrovae.models.contract.own_params`)."""
    from pyrovae.models.contract import param_tensor, traces

    model_tr, guide_tr = traces(model, tuple(batch))
    groups: dict[str, dict[int, torch.Tensor]] = {"guide": {}, "model": {}}
    for role, trace in (("guide", guide_tr), ("model", model_tr)):
        for site in trace.nodes.values():
            if site["type"] == "param":
                p = param_tensor(model, site)
                if p.requires_grad and id(p) not in groups["guide"]:
                    groups[role].setdefault(id(p), p)
    return {role: list(tensors.values()) for role, tensors in groups.items()}


def gradient_draws(
    elbo: pyro.infer.ELBO,
    model: Callable,
    guide: Callable,
    args: Sequence,
    kwargs: dict | None,
    param_groups: dict[str, list[torch.Tensor]],
    draws: int = 100,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], float]:
    """Draw the gradient of ``-elbo`` ``draws`` times at fixed parameters.

    Calls ``elbo.loss_and_grads(model, guide, *args, **kwargs)`` with cleared gradients each
    time. Parameters are not changed; their ``.grad`` and the global torch RNG state are
    restored afterwards (draws use ``torch.manual_seed(seed)`` inside a forked RNG).

    :returns: ``({group: tensor of shape (draws, n_coordinates)}, seconds per draw)``; the
        coordinates of a group are its tensors flattened and concatenated in order, and a
        tensor that gets no gradient contributes zeros.
    """
    if draws < 2:
        raise ValueError(f"draws must be >= 2 to estimate a variance, got {draws}")
    kwargs = {} if kwargs is None else kwargs
    groups = param_groups
    params = [p for ps in groups.values() for p in ps]
    saved = [p.grad for p in params]
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in groups}
    seconds = 0.0
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):  # manual_seed below reseeds CUDA too
            if elbo.max_plate_nesting == float("inf"):
                # Pyro finds the nesting by running model and guide once, drawing noise: do it
                # before seeding, so a fresh estimator draws what a used one does
                elbo._guess_max_plate_nesting(model, guide, tuple(args), kwargs)
            torch.manual_seed(seed)
            for _ in range(draws):
                for p in params:
                    p.grad = None
                start = time.perf_counter()
                elbo.loss_and_grads(model, guide, *args, **kwargs)
                seconds += time.perf_counter() - start
                for name, ps in groups.items():
                    samples[name].append(
                        torch.cat(
                            [
                                (p.grad if p.grad is not None else torch.zeros_like(p))
                                .detach()
                                .reshape(-1)
                                for p in ps
                            ]
                        )
                    )
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return {name: torch.stack(s) for name, s in samples.items()}, seconds / draws


def gradient_stats(
    elbo: pyro.infer.ELBO,
    model: Callable,
    guide: Callable,
    args: Sequence,
    kwargs: dict | None,
    param_groups: dict[str, list[torch.Tensor]],
    draws: int = 100,
    seed: int = 0,
) -> dict:
    """Mean, variance and signal-to-noise ratio of an estimator's gradient, per parameter group.

    Example: ``param_groups=param_groups(model, (x,))`` (the guide's and the model's
    parameters). Gradients are those of the loss (``-ELBO``).

    :returns: ``{group: {"mean_norm", "variance", "snr", "coordinates"}, ...,
        "seconds_per_draw": float}`` where, over the group's coordinates ``d`` with draws
        ``g_d``: ``mean_norm = ||mean_d||_2`` (norm of the mean gradient), ``variance`` = the
        average over ``d`` of the unbiased sample variance of ``g_d``, and ``snr`` = the
        average over ``d`` of ``|mean(g_d)| / std(g_d)``. Coordinates whose gradient is
        identically zero in every draw (unused parameters) are left out of ``snr``; a
        coordinate with zero variance but a non-zero mean has SNR ``inf``. ``coordinates`` is
        the number of coordinates in the group.
    """
    samples, seconds = gradient_draws(
        elbo, model, guide, args, kwargs, param_groups, draws=draws, seed=seed
    )
    stats: dict = {}
    for name, g in samples.items():
        mean, std = g.mean(0), g.std(0)
        used = (g != 0).any(0)
        snr = (mean.abs() / std)[used]
        stats[name] = {
            "mean_norm": mean.norm().item(),
            "variance": g.var(0).mean().item() if g.shape[1] else float("nan"),
            "snr": snr.mean().item() if snr.numel() else float("nan"),
            "coordinates": g.shape[1],
        }
    stats["seconds_per_draw"] = seconds
    return stats
