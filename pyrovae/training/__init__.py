"""Training: the config, the one loop, its step (eager or CUDA graph), data parallelism, and
callbacks (early stopping, the best checkpoint, a time budget)."""

from pyrovae.training.callbacks import BestCheckpoint, EarlyStopping, TimeBudget, load_best
from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import Run, TrainingDiverged, build_vae, fit, load_run, train

__all__ = ["BestCheckpoint", "EarlyStopping", "Run", "TimeBudget", "TrainConfig", "TrainingDiverged",
           "build_vae", "fit", "load_best", "load_run", "train"]
