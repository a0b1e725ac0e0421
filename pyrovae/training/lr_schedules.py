"""Learning-rate schedules by name, as torch's own schedulers, stepped once per epoch.

``constant`` (none), ``step:every=E,gamma=G`` (``StepLR``: times G every E epochs; defaults 10,
0.5), ``exponential:gamma=G`` (``ExponentialLR``: times G every epoch; default 0.95), ``cosine``
(``CosineAnnealingLR`` from lr to 0 over the run's epochs). The scheduler's state is saved in each
checkpoint and restored on resume, so a resumed run follows the same learning rates.
"""

from __future__ import annotations

from typing import Any

import torch

from pyrovae import checks
from pyrovae.errors import PyrovaeError

__all__ = ["LR_SCHEDULES", "build_lr_schedule", "parse_lr_schedule"]

# name -> {option: default}
LR_SCHEDULES: dict[str, dict[str, float]] = {
    "constant": {}, "step": {"every": 10, "gamma": 0.5}, "exponential": {"gamma": 0.95}, "cosine": {},
}


def parse_lr_schedule(spec: str) -> tuple[str, dict[str, float]]:
    """``"step:every=5,gamma=0.3"`` -> ``("step", {"every": 5, "gamma": 0.3})``, checked."""
    flag = checks.label("lr_schedule", "--lr-schedule")
    if not isinstance(spec, str) or not spec.strip():
        raise PyrovaeError(f"{flag} must be one of {', '.join(LR_SCHEDULES)}, got {spec!r}")
    name, sep, rest = spec.strip().partition(":")
    if name not in LR_SCHEDULES:
        raise PyrovaeError(f"unknown {flag} {name!r}: choose one of {', '.join(LR_SCHEDULES)}")
    options = dict(LR_SCHEDULES[name])
    given: set[str] = set()
    for item in rest.split(",") if sep else []:
        key, eq, text = (t.strip() for t in item.partition("="))
        if key not in LR_SCHEDULES[name] or not eq or key in given:
            valid = ", ".join(f"{k}=" for k in LR_SCHEDULES[name]) or "none"
            raise PyrovaeError(f"{flag} {spec!r}: bad option {item.strip()!r}; {name} takes {valid}")
        given.add(key)
        try:
            options[key] = float(text)
        except ValueError:
            raise PyrovaeError(f"{flag} {spec!r}: {key} must be a number, got {text!r}") from None
    if "every" in options:
        every = options["every"]
        if every != int(every) or not 1 <= every <= 1e6:
            raise PyrovaeError(f"{flag} {spec!r}: every must be a whole number of epochs >= 1")
        options["every"] = int(every)
    if "gamma" in options and not 0 < options["gamma"] <= 1:
        raise PyrovaeError(f"{flag} {spec!r}: gamma must lie in (0, 1], got {options['gamma']:g}")
    return name, options


def build_lr_schedule(spec: str, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """The torch scheduler for ``spec`` over a run of ``epochs`` epochs (``None`` for constant)."""
    name, options = parse_lr_schedule(spec)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, options["every"], options["gamma"])
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, options["gamma"])
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    return None
