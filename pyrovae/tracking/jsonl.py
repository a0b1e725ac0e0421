"""Per-step rows in ``RUN/steps.jsonl``: ``{"step": ..., "epoch": ..., <scalars>}`` every ``every``
steps (per-epoch rows are the training loop's ``metrics.jsonl``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from pyrovae.tracking.base import DEFAULT_EVERY, Tracker, check_every, numbers

STEPS = "steps.jsonl"


class JSONLTracker(Tracker):
    """Appends one JSON line per kept step to ``RUN/steps.jsonl``, flushed line by line."""

    name = "jsonl"

    def __init__(self, every: int = DEFAULT_EVERY) -> None:
        self.every = check_every(every)
        self.path: Path | None = None
        self._file: IO[str] | None = None

    def start(self, run_dir: str | os.PathLike, config: Mapping[str, Any], *, step: int = 0) -> None:
        self.path = Path(run_dir) / STEPS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _keep_until(self.path, step)
        self._file = open(self.path, "a", buffering=1)  # line-buffered: a crash keeps whole rows

    def log_step(self, step: int, scalars: Mapping[str, float], *, epoch: int | None = None) -> None:
        if self._file is None or not self.due(step):
            return
        self._file.write(json.dumps({"step": step, "epoch": epoch, **numbers(scalars)}) + "\n")

    def close(self, failed: bool = False) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_steps(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``RUN/steps.jsonl`` (a last line cut short by a kill is left out)."""
    from pyrovae.runs import read_jsonl

    return read_jsonl(Path(run_dir) / STEPS)


def _keep_until(path: Path, step: int) -> None:
    """Drop rows after ``step`` (a resumed run redoes those steps); ``step=0`` empties the file."""
    rows = [r for r in read_steps(path.parent) if r.get("step", 0) <= step] if step > 0 else []
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
