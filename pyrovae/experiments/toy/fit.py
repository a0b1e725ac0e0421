"""The toy fitted through the one training loop (:func:`pyrovae.train`), one record per logged step.

Each fit is one full-batch step per epoch of :func:`pyrovae.train` (no held-out evaluation: a
callback computes the exact ELBO and log-likelihood instead). It runs in its own scope of Pyro's
param store and its own fork of torch's random state, so several fits can run side by side (a
notebook, a benchmark) without leaking parameters or disturbing the caller's random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch

from pyrovae.data.datasets import Dataset
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.toy import exact
from pyrovae.experiments.toy.data import check_data, check_positive_int
from pyrovae.experiments.toy.model import PARAM_NAMES, BernoulliToy, get_estimator
from pyrovae.training.loop import train

Record = dict[str, float | int | str]


@dataclass
class ToyFit:
    """What one fit produced.

    ``records``: one dict per logged step (step 0 is the starting point) with ``step``,
    ``estimator``, ``loss`` (the estimator's own loss, from the step's pre-update parameters),
    ``exact_elbo`` and ``exact_loglik`` (all three in nats per data point), ``p``, ``sigma``,
    ``guide_w``, ``guide_b`` and ``seconds`` (cumulative wall time spent in SVI steps, evaluation
    excluded). ``params``: final ``p``, ``sigma``, ``guide_w``, ``guide_b`` as detached 0-d tensors.
    """

    estimator: str
    records: list[Record] = field(default_factory=list)
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def final(self) -> Record:
        """The last record."""
        return self.records[-1]


def evaluate(toy: BernoulliToy, x: torch.Tensor) -> Record:
    """Exact per-point ELBO and log-likelihood at the current parameters, plus the parameters."""
    p, sigma = toy.model_params(x.dtype)
    w, b = toy.guide_params(x.dtype)
    with torch.no_grad():
        n = x.shape[0]
        return {
            "exact_elbo": float(exact.elbo(x, w * x + b, p, sigma).sum()) / n,
            "exact_loglik": float(exact.log_marginal(x, p, sigma).sum()) / n,
            "p": float(p),
            "sigma": float(sigma),
            "guide_w": float(w),
            "guide_b": float(b),
        }


def fit_toy(
    x: torch.Tensor,
    estimator: str = "enum",
    *,
    steps: int = 500,
    lr: float = 0.05,
    p_init: float = 0.5,
    sigma: float = 1.0,
    learn_sigma: bool = False,
    guide_init: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
    log_every: int = 1,
    stop: Callable[[Record], bool] | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> ToyFit:
    """Fit ``p`` (and ``sigma``) and the amortized guide to data ``x`` (shape ``(n,)``) by SVI.

    ``estimator`` is a key of :data:`pyrovae.experiments.toy.model.ESTIMATORS` (registry specs).
    Adam with step size ``lr`` runs for ``steps`` full-batch steps from ``p_init``, ``sigma`` (fixed
    unless ``learn_sigma``) and ``guide_init``; every ``log_every`` steps (and at the last) a record
    is appended and passed to ``on_record``, and the loop ends early once ``stop(record)`` is true.
    """
    x = check_data(x)
    steps = check_positive_int(steps, "steps", "--steps")
    log_every = check_positive_int(log_every, "log_every", "--log-every")
    if not (lr > 0 and math.isfinite(lr)):
        raise PyrovaeError(f"lr must be > 0, got {lr}: pass a positive --lr such as 0.05")
    est = get_estimator(estimator)
    toy = BernoulliToy(p_init=p_init, sigma=sigma, learn_sigma=learn_sigma, guide_init=guide_init,
                       baseline=est.baseline)
    result = ToyFit(estimator)
    n = x.shape[0]
    data = Dataset("bernoulli-toy", x, x)

    def log(step: int, loss: float, seconds: float) -> bool:
        record = {"step": step, "estimator": estimator, "loss": loss, **evaluate(toy, x),
                  "seconds": seconds}
        result.records.append(record)
        if on_record is not None:
            on_record(record)
        return stop is not None and stop(record)

    def after_epoch(run, row) -> bool:
        step = row["step"]
        if step % log_every and step != steps:
            return False
        return log(step, row["train_loss"], sum(r["seconds"] for r in run.metrics))

    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with pyro.get_param_store().scope():  # the starting point, at the initial values
            start = evaluate(toy, x)
            with torch.no_grad():
                loss0 = _initial_loss(toy, est.spec, x)
        record = {"step": 0, "estimator": estimator, "loss": loss0 / n, **start, "seconds": 0.0}
        result.records.append(record)
        if on_record is not None:
            on_record(record)
        if not (stop is not None and stop(record)):
            try:
                train(model=toy, data=data, epochs=steps, batch_size=n, lr=lr, estimator=est.spec,
                      seed=seed, eval_held_out=False, progress=False, figures=False,
                      callbacks=[after_epoch])
            except PyrovaeError as exc:
                if "loss became" in str(exc):
                    what = str(exc).split(";")[0].removeprefix("training stopped: ")
                    raise PyrovaeError(f"{estimator}: {what}: lower --lr (now {lr})") from None
                raise
        p, s = toy.model_params(x.dtype)
        w, b = toy.guide_params(x.dtype)
        values = (p, s, w, b)
        result.params = {k: v.detach().clone() for k, v in zip(PARAM_NAMES, values, strict=True)}
    return result


def _initial_loss(toy: BernoulliToy, spec: str, x: torch.Tensor) -> float:
    from pyrovae.infer.registry import make_elbo

    with pyro.validation_enabled(False):
        return make_elbo(spec, max_plate_nesting=1).loss(toy.model, toy.guide, x)
