"""One SVI loop for the toy, shared by every estimator, returning one record per logged step.

Each fit runs in its own scope of Pyro's param store and its own fork of torch's random state, so
several fits can run side by side (a notebook, a benchmark) without leaking parameters or
disturbing the caller's random numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from ..errors import PyrovaeError
from . import exact
from .data import check_data, check_positive_int
from .model import PARAM_NAMES, BernoulliToy, get_estimator

Record = dict[str, float | int | str]


@dataclass
class ToyFit:
    """What one fit produced.

    ``records``: one dict per logged step (step 0 is the starting point) with ``step``,
    ``estimator``, ``loss`` (the estimator's own loss, from the step's pre-update parameters),
    ``exact_elbo`` and ``exact_loglik`` (all
    three in nats per data point), ``p``, ``sigma``, ``guide_w``, ``guide_b`` and ``seconds``
    (cumulative wall time spent in SVI steps, evaluation excluded).
    ``params``: final ``p``, ``sigma``, ``guide_w``, ``guide_b`` as detached 0-d tensors.
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

    ``estimator`` is a key of :data:`pyrovae.toy.model.ESTIMATORS`. Adam with step size ``lr``
    runs for ``steps`` full-batch steps from ``p_init``, ``sigma`` (fixed unless ``learn_sigma``)
    and ``guide_init``; every ``log_every`` steps (and at the last) a record is appended and passed
    to ``on_record``, and the loop ends early once ``stop(record)`` is true.
    """
    x = check_data(x)
    steps = check_positive_int(steps, "steps", "--steps")
    log_every = check_positive_int(log_every, "log_every", "--log-every")
    if not (lr > 0 and math.isfinite(lr)):
        raise PyrovaeError(f"lr must be > 0, got {lr}: pass a positive --lr such as 0.05")
    est = get_estimator(estimator)
    toy = BernoulliToy(p_init=p_init, sigma=sigma, learn_sigma=learn_sigma, guide_init=guide_init)
    result = ToyFit(estimator)
    n = x.shape[0]

    # the first torch optimizer of a process imports torch._dynamo (about 2 s): pay that before
    # the clock starts, so "seconds" measures SVI steps only
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        svi = SVI(toy.model, est.wrap_guide(toy.guide), Adam({"lr": lr}), est.make_elbo())
        seconds = 0.0

        def log(step: int, loss: float) -> bool:
            record = {"step": step, "estimator": estimator, "loss": loss / n}
            record.update(evaluate(toy, x))
            record["seconds"] = seconds
            result.records.append(record)
            if on_record is not None:
                on_record(record)
            return stop is not None and stop(record)

        done = log(0, svi.evaluate_loss(x))
        for step in range(1, steps + 1):
            if done:
                break
            start = time.perf_counter()
            loss = svi.step(x)
            seconds += time.perf_counter() - start
            if not math.isfinite(loss):
                raise PyrovaeError(
                    f"{estimator} loss became {loss} at step {step}: lower --lr (now {lr})"
                )
            if step % log_every == 0 or step == steps:
                done = log(step, loss)
        p, s = toy.model_params(x.dtype)
        w, b = toy.guide_params(x.dtype)
        values = (p, s, w, b)
        result.params = {k: v.detach().clone() for k, v in zip(PARAM_NAMES, values, strict=True)}
    return result
