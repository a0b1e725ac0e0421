"""Training: the config, the one loop, its step (eager or CUDA graph) and data parallelism."""

from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import Run, TrainingDiverged, build_vae, fit, load_run, train

__all__ = ["Run", "TrainConfig", "TrainingDiverged", "build_vae", "fit", "load_run", "train"]
