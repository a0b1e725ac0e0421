"""The tracker interface, the fan-out that keeps training alive when a backend fails, and helpers.

A tracker receives what the training loop already computes: per-step scalars every ``every`` steps,
each epoch's metrics row, image grids and the run's config. ``metrics.jsonl`` and checkpoints stay
the loop's; trackers are views of the same numbers for other tools.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from pyrovae import checks
from pyrovae.errors import PyrovaeError

DEFAULT_EVERY = 50  # steps between per-step rows


class TrackingWarning(UserWarning):
    """A tracker failed and was turned off; training goes on."""


def check_every(every: Any) -> int:
    """The step interval as a whole number >= 1."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise PyrovaeError(f"{checks.label('every', '--track-every')} (steps between tracked rows) "
                           f"must be a whole number >= 1, got {every!r}")
    return every


def numbers(scalars: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``scalars`` that are real numbers (a metrics row also holds names, flags)."""
    out = {}
    for key, value in scalars.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | float | int | bool]:
    """Nested config as one level: ``{"extra": {"a": 1}}`` -> ``{"extra.a": 1}``; numbers and
    flags stay, ``None`` becomes ``"None"``, lists become JSON text, anything else ``str``."""
    flat: dict[str, str | float | int | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        elif isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
            flat[name] = value
        elif isinstance(value, (list, tuple, Mapping)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def image_grid(images: torch.Tensor) -> torch.Tensor:
    """A ``(3, H', W')`` float grid in [0, 1] on the CPU of ``images`` shaped ``(N, C, H, W)``."""
    from torchvision.utils import make_grid

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3) \
            or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise PyrovaeError(f"log_images takes images shaped (N, C, H, W) with C = 1 or 3, got {shape}")
    images = images.detach().float().cpu().clamp(0, 1)
    nrow = max(1, math.ceil(math.sqrt(len(images))))
    return make_grid(images, nrow=nrow, padding=1, pad_value=1.0)


class Tracker(ABC):
    """One tracking backend. Call :meth:`start` once, the ``log_*`` methods while training, then
    :meth:`close` (or use it as a context manager around training, after :meth:`start`).

    ``log_step`` keeps only steps that are multiples of ``every``; a tracker that has no use for
    epochs or images ignores them.
    """

    name: ClassVar[str] = "tracker"
    every: int = DEFAULT_EVERY

    def due(self, step: int) -> bool:
        """Whether :meth:`log_step` keeps ``step`` (so the caller reads the loss only then)."""
        return step % self.every == 0

    @abstractmethod
    def start(self, run_dir: str | os.PathLike, config: Mapping[str, Any], *, step: int = 0) -> None:
        """Open the backend in ``run_dir`` and record ``config``; ``step > 0`` resumes a run
        from its checkpoint at that step (what was logged after it is dropped where possible)."""

    @abstractmethod
    def log_step(self, step: int, scalars: Mapping[str, float], *, epoch: int | None = None) -> None:
        """Scalars of optimizer step ``step`` (1-based, counted over the whole run)."""

    def log_epoch(self, epoch: int, step: int, scalars: Mapping[str, Any]) -> None:
        """The metrics row of ``epoch``, which ended at ``step``; non-numbers are skipped."""
        return None  # a tracker without per-epoch output ignores it

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        """A grid of ``images`` ``(N, C, H, W)`` in [0, 1], named ``name``, at ``step``."""
        return None  # a tracker without images ignores them

    @abstractmethod
    def close(self, failed: bool = False) -> None:
        """Flush and close; ``failed`` marks a run that ended with an error."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)


class Trackers(Tracker):
    """Several trackers called as one. A tracker that raises is warned about once
    (:class:`TrackingWarning`) and turned off: tracking never stops training."""

    name = "trackers"

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)
        self._off: set[int] = set()

    @property
    def active(self) -> list[Tracker]:
        """The trackers still on."""
        return [t for i, t in enumerate(self.trackers) if i not in self._off]

    def __bool__(self) -> bool:
        return bool(self.active)

    def __len__(self) -> int:
        return len(self.trackers)

    def due(self, step: int) -> bool:
        return any(t.due(step) for t in self.active)

    def start(self, run_dir: str | os.PathLike, config: Mapping[str, Any], *, step: int = 0) -> None:
        self._each("start", run_dir, config, step=step)

    def log_step(self, step: int, scalars: Mapping[str, float], *, epoch: int | None = None) -> None:
        self._each("log_step", step, scalars, epoch=epoch)

    def log_epoch(self, epoch: int, step: int, scalars: Mapping[str, Any]) -> None:
        self._each("log_epoch", epoch, step, scalars)

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        if self.active:
            image_grid(images)  # a wrong shape is the caller's error: raise it, do not disable
            self._each("log_images", step, name, images)

    def close(self, failed: bool = False) -> None:
        self._each("close", failed=failed)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for i, tracker in enumerate(self.trackers):
            if i in self._off:
                continue
            try:
                getattr(tracker, method)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any backend failure must spare training
                self._off.add(i)
                warnings.warn(f"tracking: {tracker.name} failed in {method} ({type(exc).__name__}: "
                              f"{exc}); it is off for the rest of this run, training goes on",
                              TrackingWarning, stacklevel=3)
                if method != "close":
                    with contextlib.suppress(Exception):
                        tracker.close(failed=True)
