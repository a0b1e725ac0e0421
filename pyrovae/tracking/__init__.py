"""Experiment tracking: per-step and per-epoch scalars, image grids and the config, sent to
TensorBoard, MLflow or ``RUN/steps.jsonl`` while training.

``build_trackers("tensorboard,mlflow", run_dir, every=50)`` gives a :class:`Trackers`; the
training loop calls ``start``, ``log_step``, ``log_epoch``, ``log_images`` and ``close``. A
backend that fails is warned about once and turned off; training goes on.
"""

from pyrovae.tracking.base import Tracker, Trackers, TrackingWarning, flatten
from pyrovae.tracking.jsonl import JSONLTracker, read_steps
from pyrovae.tracking.mlflow import MLflowTracker
from pyrovae.tracking.registry import TRACKERS, build_trackers, parse_spec
from pyrovae.tracking.tensorboard import TensorBoardTracker

__all__ = ["TRACKERS", "JSONLTracker", "MLflowTracker", "TensorBoardTracker", "Tracker", "Trackers",
           "TrackingWarning", "build_trackers", "flatten", "parse_spec", "read_steps"]
