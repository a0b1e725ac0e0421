"""Tracker names -> classes, and :func:`build_trackers` for ``--tracking tensorboard,mlflow``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from pyrovae import checks
from pyrovae.errors import PyrovaeError
from pyrovae.tracking.base import DEFAULT_EVERY, Tracker, Trackers, check_every
from pyrovae.tracking.jsonl import JSONLTracker
from pyrovae.tracking.mlflow import MLflowTracker
from pyrovae.tracking.tensorboard import TensorBoardTracker

TRACKERS: dict[str, Callable[[int], Tracker]] = {
    "jsonl": JSONLTracker,
    "tensorboard": TensorBoardTracker,
    "mlflow": MLflowTracker,
}


def parse_spec(spec: str | Sequence[str] | None) -> list[str]:
    """``"tensorboard, mlflow"`` or ``["tensorboard", "mlflow"]`` -> known names, in order, once
    each; ``None``, ``""`` and ``"none"`` -> ``[]``."""
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    if not all(isinstance(p, str) for p in parts):
        raise PyrovaeError(f"{checks.label('tracking')} takes tracker names, got {spec!r}")
    names = list(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise PyrovaeError(f"unknown tracker(s) {unknown} in {checks.label('tracking')}: choose from "
                           f"{', '.join(TRACKERS)}, comma-separated (e.g. tensorboard,mlflow)")
    return names


def build_trackers(spec: str | Sequence[str] | None, run_dir: str | os.PathLike | None, *,
                   every: int = DEFAULT_EVERY) -> Trackers:
    """The :class:`Trackers` named in ``spec`` (not started yet), keeping per-step scalars every
    ``every`` steps. Names: ``jsonl`` (``RUN/steps.jsonl``), ``tensorboard``, ``mlflow``. Each
    writes inside ``run_dir``, so a spec that names any needs one; a missing package is an error now,
    before training starts."""
    names = parse_spec(spec)
    every = check_every(every)
    if names and run_dir is None:
        raise PyrovaeError(f"{checks.label('tracking')} {','.join(names)} writes into the run folder: "
                           f"pass {checks.label('run_dir')} too")
    return Trackers([TRACKERS[name](every) for name in names])
