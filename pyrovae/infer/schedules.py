"""KL-weight (beta) schedules: pure functions ``step -> beta`` that the training loop evaluates.

Spec strings (CLI ``--kl-schedule``; the target is ``--beta``):

- ``constant``: beta at every step.
- ``linear[:steps=N | epochs=E]``: 0 at step 0, rising linearly to beta at step N, then flat.
- ``cyclical[:cycles=M,ratio=R]``: the run split into M equal cycles; in each, beta rises linearly
  from 0 over the first fraction R of the cycle, then stays flat (Fu et al. 2019, "Cyclical
  Annealing Schedule"). Defaults M=4, R=0.5.
- ``sigmoid[:steps=N | epochs=E,k=K]``: ``beta * sigmoid(K (step / N - 1/2))``, rescaled to be 0
  at step 0 and beta from step N on. Default K=10.

Without ``steps``/``epochs``, ``linear`` and ``sigmoid`` rise over the first half of the run. A
schedule is resolved once against the run's length, and its :meth:`to_dict` is saved in the
checkpoint, so a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pyrovae import checks
from pyrovae.errors import PyrovaeError


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise PyrovaeError(f"{checks.label('beta')} must be a finite number >= 0, got {beta}")
    return float(beta)


@dataclass(frozen=True)
class Constant:
    beta: float = 1.0
    name = "constant"

    def __call__(self, step: int) -> float:
        return self.beta


@dataclass(frozen=True)
class Linear:
    beta: float
    steps: int
    name = "linear"

    def __call__(self, step: int) -> float:
        return self.beta * min(1.0, step / self.steps)


@dataclass(frozen=True)
class Cyclical:
    beta: float
    total_steps: int
    cycles: int = 4
    ratio: float = 0.5
    name = "cyclical"

    def __call__(self, step: int) -> float:
        period = self.total_steps / self.cycles
        phase = (step % period) / period if step < self.total_steps else 1.0
        return self.beta * min(1.0, phase / self.ratio)


@dataclass(frozen=True)
class Sigmoid:
    beta: float
    steps: int
    k: float = 10.0
    name = "sigmoid"

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return self.beta
        # the logistic function written with tanh, which cannot overflow for large k
        s = lambda t: 0.5 * (1.0 + math.tanh(0.5 * self.k * (t - 0.5)))  # noqa: E731
        lo, hi = s(0.0), s(1.0)
        return self.beta * (s(step / self.steps) - lo) / (hi - lo)


SCHEDULES = {cls.name: cls for cls in (Constant, Linear, Cyclical, Sigmoid)}
Schedule = Constant | Linear | Cyclical | Sigmoid


def to_dict(schedule: Schedule) -> dict[str, Any]:
    """Plain data describing a resolved schedule (stored in checkpoints and config files)."""
    return {"name": schedule.name, **asdict(schedule)}


def from_dict(data: dict[str, Any]) -> Schedule:
    """Inverse of :func:`to_dict`."""
    data = dict(data)
    name = data.pop("name", None)
    if name not in SCHEDULES:
        raise PyrovaeError(f"unknown KL schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**data)


def parse_schedule(
    spec: str | None, beta: float = 1.0, total_steps: int = 1, steps_per_epoch: int = 1
) -> Schedule:
    """Resolve a spec string (see the module docstring) against a run of ``total_steps`` steps."""
    beta = _check_beta(beta)
    spec = (spec or "constant").strip()
    name, _, rest = spec.partition(":")
    if name not in SCHEDULES:
        raise PyrovaeError(
            f"unknown KL schedule {name!r} in {spec!r}: choose one of {', '.join(SCHEDULES)}"
        )
    allowed = {"constant": set(), "linear": {"steps", "epochs"},
               "cyclical": {"cycles", "ratio"}, "sigmoid": {"steps", "epochs", "k"}}[name]
    opts: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            hint = ", ".join(sorted(allowed)) or "no options"
            raise PyrovaeError(f"bad option {item!r} in KL schedule {spec!r}: {name} takes {hint}")
        try:
            opts[key] = float(value)
        except ValueError:
            raise PyrovaeError(f"option {key} in KL schedule {spec!r} must be a number") from None
        if not math.isfinite(opts[key]):
            raise PyrovaeError(f"option {key} in KL schedule {spec!r} must be finite")
    total_steps = max(1, int(total_steps))
    if name == "constant":
        return Constant(beta)
    if name == "cyclical":
        cycles, ratio = opts.get("cycles", 4), opts.get("ratio", 0.5)
        if cycles < 1 or cycles != int(cycles):
            raise PyrovaeError(f"cyclical schedule needs a whole number of cycles >= 1, got {cycles}")
        if not 0 < ratio <= 1:
            raise PyrovaeError(f"cyclical schedule needs ratio in (0, 1], got {ratio}")
        return Cyclical(beta, total_steps, int(cycles), float(ratio))
    if "steps" in opts and "epochs" in opts:
        raise PyrovaeError(f"KL schedule {spec!r}: give steps or epochs, not both")
    steps = opts["steps"] if "steps" in opts else opts.get("epochs", 0) * steps_per_epoch
    if "steps" not in opts and "epochs" not in opts:
        steps = total_steps // 2
    if steps < 1:
        raise PyrovaeError(f"KL schedule {spec!r} must rise over at least 1 step, got {steps}")
    if name == "linear":
        return Linear(beta, int(steps))
    k = opts.get("k", 10.0)
    if not k > 0:
        raise PyrovaeError(f"sigmoid schedule needs k > 0, got {k}")
    return Sigmoid(beta, int(steps), float(k))
