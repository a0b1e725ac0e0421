"""pyrovae: variational auto-encoders written as Pyro probabilistic programs.

The Python API is the one the CLI uses::

    import pyrovae
    data = pyrovae.load_dataset("mnist-5k")
    run = pyrovae.train(dataset="mnist-5k", epochs=10, run_dir="runs/nb")
    pyrovae.evaluate(run.vae, run.data.test_x, iwae_k=1000)
    loc, scale = pyrovae.encode(run.vae, run.data.test_x)
    images = pyrovae.sample(run.vae, 64, seed=0)
"""

from . import plots, runs, toy
from .config import TrainConfig
from .data import Dataset, binarize, load_dataset
from .errors import PyrovaeError
from .evaluation import active_units, elbo_terms, evaluate, log_likelihood
from .likelihoods import LIKELIHOODS, build_likelihood
from .objectives import estimator_names, make_elbo
from .schedules import parse_schedule
from .sweep import sweep
from .training import Run, TrainingDiverged, build_vae, load_run, train
from .vae import VAE, encode, kl_weight, sample

__version__ = "0.1.0"

__all__ = [
    "LIKELIHOODS", "VAE", "Dataset", "PyrovaeError", "Run", "TrainConfig", "TrainingDiverged",
    "active_units", "binarize", "build_likelihood", "build_vae", "elbo_terms", "encode",
    "estimator_names", "evaluate", "kl_weight", "load_dataset", "load_run", "log_likelihood",
    "make_elbo", "parse_schedule", "plots", "runs", "sample", "sweep", "toy", "train",
]
