"""TensorBoard event files in ``RUN/tensorboard/``: ``step/<name>`` and ``epoch/<name>`` scalars
(both against the optimizer step), image grids, the config as text and as hyperparameters."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pyrovae.errors import PyrovaeError
from pyrovae.tracking.base import DEFAULT_EVERY, Tracker, check_every, flatten, image_grid, numbers

FOLDER = "tensorboard"


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PyrovaeError("tracking with tensorboard needs the tensorboard package: pip install "
                           "tensorboard (or pyrovae[tracking])") from None
    return SummaryWriter


class TensorBoardTracker(Tracker):
    """A ``SummaryWriter`` on ``RUN/tensorboard``. A resumed run writes a new event file that
    purges the events logged after its checkpoint; a fresh run removes earlier event files."""

    name = "tensorboard"

    def __init__(self, every: int = DEFAULT_EVERY) -> None:
        self.every = check_every(every)
        self._writer_class = _summary_writer()  # fail before training when the package is missing
        self.writer: Any = None
        self.log_dir: Path | None = None

    def start(self, run_dir: str | os.PathLike, config: Mapping[str, Any], *, step: int = 0) -> None:
        self.log_dir = Path(run_dir) / FOLDER
        if step == 0:  # a new (or overwritten) run: curves of the replaced one must not mix in
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = self._writer_class(str(self.log_dir), purge_step=step + 1 if step else None)
        self.writer.add_text("config", "```\n" + json.dumps(dict(config), indent=2, default=str)
                             + "\n```", global_step=step)
        self._write_hparams(flatten(config))

    def _write_hparams(self, values: dict[str, Any]) -> None:
        """The session-start summary only: TensorBoard's hparams plugin then builds the experiment
        itself, with every scalar tag of the run as a metric (``add_hparams`` would write them into
        a separate sub-run, apart from the curves)."""
        from torch.utils.tensorboard.summary import hparams

        _, session_start, _ = hparams(values, {})
        self.writer.file_writer.add_summary(session_start)

    def log_step(self, step: int, scalars: Mapping[str, float], *, epoch: int | None = None) -> None:
        if self.writer is None or not self.due(step):
            return
        for key, value in numbers(scalars).items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, epoch: int, step: int, scalars: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in numbers(scalars).items():
            self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()  # an epoch's worth is on disk even if the process is killed next

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer.add_image(name, image_grid(images), step)

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
