"""The runs of a multi-run experiment (sweep, compare, baselines): train each once, resume it when
it was interrupted, skip it when it is finished, and summarise seeds as a mean and standard error.

A folder that already holds a run is reused only if its recorded settings are the ones asked for;
otherwise the experiment stops with the differing setting, so a rerun never overwrites results.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyrovae import checks, runs
from pyrovae.data.datasets import Dataset
from pyrovae.errors import PyrovaeError
from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import Run, load_run, train

__all__ = ["ensure_run", "mean_se", "pm", "seed_dirs", "summarise", "say"]

# options a finished run may differ in without being another run (they do not change its results)
IGNORED = {"epochs", "device", "data_dir", "compile", "eval_batch_size", "extra"}


def say(progress: bool, text: str) -> None:
    """One progress line on standard error when ``progress`` is on (long experiments are not silent)."""
    if progress:
        print(text, file=sys.stderr, flush=True)


def seed_dirs(folder: Path, seed: int, seeds: int) -> list[tuple[int, Path]]:
    """``(seed, run folder)`` for ``seeds`` seeds starting at ``seed``: ``folder`` itself for one
    seed, ``folder/seed-<s>`` for several."""
    checks.whole(seeds, "seeds")
    if seeds == 1:
        return [(seed, folder)]
    return [(seed + i, folder / f"seed-{seed + i}") for i in range(seeds)]


def _differences(run_dir: Path, asked: dict[str, Any]) -> list[str]:
    recorded = runs.read_config(run_dir)
    defaults = TrainConfig().to_dict()
    out = []
    for key, value in asked.items():
        if key in IGNORED or key not in defaults:
            continue
        have = recorded.get(key, defaults[key])
        if value is not None and _norm(have) != _norm(value):
            out.append(f"{key}: recorded {have!r}, asked {value!r}")
    return out


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def ensure_run(run_dir: str | os.PathLike, epochs: int | None, *, data: Dataset | None = None,
               model: Any = None, progress: bool = False, label: str = "",
               callbacks: Sequence[Callable] = (), **config: Any) -> tuple[Run, str]:
    """The run in ``run_dir`` trained for ``epochs`` epochs with ``config``: trained fresh when the
    folder holds no run, resumed when it holds fewer epochs, loaded when it is finished.

    ``epochs=None``: the data set's default (the number the run records). ``model``: ``None`` or a
    built-in name (from ``config``), or a fresh user model object.
    Returns the run and what was done (``"trained"``, ``"resumed"`` or ``"finished"``).
    """
    run_dir = Path(run_dir)
    if epochs is not None:
        checks.whole(epochs, "epochs")
    user = model if model is not None and not isinstance(model, str) else None
    if not (run_dir / runs.CHECKPOINT).is_file():
        say(progress, f"{label}: training in {run_dir}")
        run = train(run_dir=run_dir, data=data, model=model, epochs=epochs, progress=False,
                    figures=False, callbacks=callbacks, **config)
        return run, "trained"
    diff = _differences(run_dir, {**config, "model": model} if isinstance(model, str) else config)
    if diff:
        raise PyrovaeError(f"{run_dir} holds a run with other settings ({'; '.join(diff)}): delete it "
                           "or choose another output folder")
    done = len(runs.read_metrics(run_dir))
    epochs = epochs if epochs is not None else int(runs.read_config(run_dir)["epochs"])
    if done >= epochs:
        say(progress, f"{label}: finished run found in {run_dir} ({done} epochs), skipped")
        return load_run(run_dir, model=user, data=data if data is not None else True), "finished"
    say(progress, f"{label}: resuming {run_dir} from epoch {done} to {epochs}")
    run = train(run_dir=run_dir, data=data, model=user, resume=True, epochs=epochs, progress=False,
                figures=False, callbacks=callbacks)
    return run, "resumed"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error ``s / sqrt(n)`` (``s`` with ``n - 1``) of ``values``; the error of a
    single value is NaN (unknown), not 0."""
    n = len(values)
    if n == 0:
        raise PyrovaeError("no values to average")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarise(rows: list[dict[str, Any]], by: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distinct ``by`` key over per-seed ``rows``: each metric's mean (under its name)
    and standard error (``<metric>_se``), with ``seeds`` the number of rows averaged; other
    columns are taken from the first row of the group."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for members in groups.values():
        row = dict(members[0])
        row.pop("seed", None)
        row["seeds"] = len(members)
        for m in metrics:
            values = [float(r[m]) for r in members if r.get(m) is not None]
            row[m], row[f"{m}_se"] = mean_se(values) if values else (None, None)
        out.append(row)
    return out


def pm(value: float | None, se: float | None, spec: str) -> str:
    """``"value ± se"`` in format ``spec``; just the value where the error is unknown."""
    if value is None:
        return ""
    if se is None or not math.isfinite(se):
        return format(value, spec)
    return f"{format(value, spec)} ± {format(se, spec)}"
