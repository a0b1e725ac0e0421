"""Callbacks for :func:`pyrovae.train`: ``f(run, row)`` after each epoch's checkpoint; one that
returns ``True`` stops training there.

Each callback here keeps no state of its own: it reads the run's metric rows (all epochs, those of
earlier sessions included after a resume) and the run folder, so a resumed run stops and selects
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from pyrovae import checks, runs
from pyrovae.errors import PyrovaeError

__all__ = ["BEST", "BestCheckpoint", "EarlyStopping", "TimeBudget", "best_epoch"]

BEST = "best.pt"


def _values(run: Any, metric: str) -> list[float]:
    values = [r.get(metric) for r in run.metrics]
    if any(v is None for v in values):
        raise PyrovaeError(f"the metric {metric!r} is missing from the run's rows: choose one of "
                           f"{sorted(k for k, v in run.metrics[-1].items() if isinstance(v, float))}")
    return [float(v) if math.isfinite(v) else -math.inf for v in values]


def best_epoch(run: Any, metric: str = "test_elbo", mode: str = "max") -> int:
    """The epoch (1-based) with the best ``metric`` so far (the first of equal ones)."""
    values = _values(run, metric)
    signed = values if mode == "max" else [-v for v in values]
    return signed.index(max(signed)) + 1


def _check_mode(mode: str) -> str:
    if mode not in ("max", "min"):
        raise PyrovaeError(f"mode must be 'max' or 'min', got {mode!r}")
    return mode


class BestCheckpoint:
    """Copy ``checkpoint.pt`` to ``best.pt`` whenever ``metric`` (default the held-out ELBO, which
    is the validation ELBO when the data's held-out split is a validation set) is the best so far.
    ``pyrovae.load_run(run_dir, checkpoint="best.pt")`` is not needed: load ``best.pt`` with
    :func:`load_best`."""

    def __init__(self, metric: str = "test_elbo", mode: str = "max"):
        self.metric, self.mode = metric, _check_mode(mode)

    def __call__(self, run: Any, row: dict[str, Any]) -> None:
        if run.run_dir is None:
            raise PyrovaeError("BestCheckpoint needs a run folder: pass run_dir to train")
        if best_epoch(run, self.metric, self.mode) == row["epoch"]:
            folder = Path(run.run_dir)
            tmp = folder / f"{BEST}.tmp"
            shutil.copyfile(folder / runs.CHECKPOINT, tmp)
            tmp.replace(folder / BEST)


class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: int = 5, metric: str = "test_elbo", mode: str = "max",
                 min_delta: float = 0.0):
        self.patience = checks.whole(patience, "patience")
        self.min_delta = checks.finite(min_delta, "min_delta", minimum=0.0)
        self.metric, self.mode = metric, _check_mode(mode)

    def __call__(self, run: Any, row: dict[str, Any]) -> bool:
        values = _values(run, self.metric)
        signed = values if self.mode == "max" else [-v for v in values]
        best, since = -math.inf, 0
        for v in signed:
            if v > best + self.min_delta:
                best, since = v, 0
            else:
                since += 1
        return since >= self.patience


class TimeBudget:
    """Stop once the run's summed training time (evaluation excluded, all sessions) reaches
    ``minutes``: the epoch during which it passed is the last."""

    def __init__(self, minutes: float):
        self.seconds = 60.0 * checks.positive(minutes, "minutes")

    def __call__(self, run: Any, row: dict[str, Any]) -> bool:
        return sum(r["seconds"] for r in run.metrics) >= self.seconds


def load_best(run_dir: str, **kwargs: Any) -> Any:
    """The run in ``run_dir`` with the weights of ``best.pt`` (see :class:`BestCheckpoint`);
    ``kwargs`` go to :func:`pyrovae.load_run`."""
    from pyrovae.training.loop import load_run

    folder = Path(run_dir)
    if not (folder / BEST).is_file():
        raise PyrovaeError(f"{folder / BEST} not found: train with callbacks=[BestCheckpoint()]")
    return load_run(folder, checkpoint=BEST, **kwargs)
