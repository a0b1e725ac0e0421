"""pyrovae: variational auto-encoders written as Pyro probabilistic programs.

Any object with Pyro ``model(*batch)`` and ``guide(*batch)`` methods goes through the whole
library, built-in or the user's own::

    import pyrovae
    data = pyrovae.load_dataset("mnist-5k")
    run = pyrovae.train(dataset="mnist-5k", epochs=10, run_dir="runs/nb")   # or model=my_model
    pyrovae.evaluate(run.model, run.data.test_x, iwae_k=1000)
    loc, scale = pyrovae.encode(run.model, run.data.test_x)
    images = pyrovae.sample(run.model, 64, seed=0)

Subpackages follow the data flow: ``data`` -> ``nn`` -> ``models`` -> ``infer`` -> ``training`` /
``evaluation`` -> ``experiments`` -> ``viz`` -> ``cli``.
"""

from pyrovae import runs
from pyrovae.data.datasets import Dataset, binarize, load_dataset
from pyrovae.distributions import DiagNormalMixture
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.diagnostics import gradient_stats, param_groups
from pyrovae.evaluation.generate import encode, reconstruct, sample
from pyrovae.evaluation.metrics import active_units, elbo_terms, evaluate, log_likelihood
from pyrovae.experiments import toy
from pyrovae.experiments.compare import compare, gradient_report
from pyrovae.experiments.sweep import sweep
from pyrovae.infer.beta import KLWeight, kl_weight
from pyrovae.infer.registry import describe_estimators, estimator_names, make_elbo
from pyrovae.infer.schedules import parse_schedule
from pyrovae.models.registry import BUILTINS, build_model
from pyrovae.models.vae import VAE, AutoEncoder, DenoisingAutoEncoder
from pyrovae.nn.likelihoods import LIKELIHOODS, build_likelihood
from pyrovae.training.callbacks import BestCheckpoint, EarlyStopping, TimeBudget, load_best
from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import Run, TrainingDiverged, build_vae, load_run, train
from pyrovae.viz import plots

__version__ = "0.2.0"

__all__ = [
    "BUILTINS", "LIKELIHOODS", "VAE", "AutoEncoder", "BestCheckpoint", "Dataset", "DenoisingAutoEncoder",
    "DiagNormalMixture",
    "EarlyStopping", "KLWeight", "TimeBudget", "load_best",
    "PyrovaeError", "Run", "TrainConfig", "TrainingDiverged", "active_units", "binarize",
    "build_likelihood", "build_model", "build_vae", "compare", "describe_estimators", "elbo_terms",
    "encode", "gradient_report",
    "estimator_names", "evaluate", "gradient_stats", "kl_weight", "load_dataset", "load_run",
    "log_likelihood", "make_elbo", "param_groups", "parse_schedule", "plots", "reconstruct", "runs",
    "sample", "sweep", "toy", "train",
]
