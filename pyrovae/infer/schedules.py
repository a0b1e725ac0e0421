"""KL-weight (beta) schedules: pure functions ``step -> beta`` that the training loop evaluates.

Spec strings (CLI ``--kl-schedule``; the target is ``--beta``):

- ``constant``: beta at every step.
- ``linear[:steps=N | epochs=E]``: 0 at step 0, rising linearly to beta at step N, then flat.
- ``cyclical[:cycles=M,ratio=R]``: the run split into M equal cycles; in each, beta rises linearly
  from 0 over the first fraction R of the cycle, then stays flat (Fu et al. 2019, "Cyclical
  Annealing Schedule"). M is a whole number from 1 to the run's steps (default 4, or fewer for
  a run shorter than 4 steps), R in (0, 1] (default 0.5).
- ``sigmoid[:steps=N | epochs=E,k=K]``: ``beta * sigmoid(K (step / N - 1/2))``, rescaled to be 0
  at step 0 and beta from step N on. K from 1e-6 (a straight line) to 1e6 (a step), default 10.

``steps`` is a whole number from 1 to 1e12; ``beta`` is at most
:data:`~pyrovae.infer.beta.MAX_BETA` (1e6). Each option is given at most once.

Without ``steps``/``epochs``, ``linear`` and ``sigmoid`` rise over the first half of the run. A
schedule is resolved once against the run's length, and its :meth:`to_dict` is saved in the
checkpoint, so a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pyrovae.errors import PyrovaeError
from pyrovae.infer.beta import check_beta

# sigmoid steepness: below 1e-6 the curve is a straight line, above 1e6 a step
K_RANGE = (1e-6, 1e6)
MAX_STEPS = 10**12  # a rise longer than this is a typo (a run of 1e12 steps takes years)


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
        return self.beta * _rescaled_logistic(0.5 * self.k, max(step, 0) / self.steps)


def _rescaled_logistic(a: float, t: float) -> float:
    """``(s(t) - s(0)) / (s(1) - s(0))`` for ``s(t) = sigmoid(2a (t - 1/2))``, ``0 <= t <= 1``.

    Written as ``sinh(a t) cosh(a/2) / (sinh(a) cosh(a (t - 1/2)))`` with every exponent <= 0, so
    it neither overflows for a steep curve nor cancels to 0/0 for a flat one (where it is ``t``).
    """
    d = abs(t - 0.5)
    ratio_sinh = math.expm1(-2 * a * t) / math.expm1(-2 * a)  # sinh(a t) / sinh(a) / e^{a (t - 1)}
    ratio_cosh = (1 + math.exp(-a)) / (1 + math.exp(-2 * a * d))  # cosh(a/2) / cosh(a d) / e^{a/2 - a d}
    return math.exp(a * (t - 0.5 - d)) * ratio_sinh * ratio_cosh


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


def _options(spec: str, name: str, rest: str, sep: str) -> dict[str, float]:
    """``"steps=10,k=4"`` -> ``{"steps": 10.0, "k": 4.0}``; empty items, repeats, unknown keys and
    values that are not finite numbers are errors."""
    allowed = {"constant": set(), "linear": {"steps", "epochs"},
               "cyclical": {"cycles", "ratio"}, "sigmoid": {"steps", "epochs", "k"}}[name]
    hint = ", ".join(sorted(allowed)) or "no options"
    if sep and not rest.strip():
        raise PyrovaeError(f"KL schedule {spec!r} has an empty option list after ':': write {name} "
                           f"alone or {name}:key=value ({name} takes {hint})")
    opts: dict[str, float] = {}
    for item in (p.strip() for p in rest.split(",")) if sep else ():
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or key not in allowed or not value:
            raise PyrovaeError(f"bad option {item!r} in KL schedule {spec!r}: {name} takes {hint} "
                               "(written key=value)")
        if key in opts:
            raise PyrovaeError(f"KL schedule {spec!r} gives {key} twice: give it once")
        try:
            opts[key] = float(value)
        except ValueError:
            raise PyrovaeError(f"option {key} in KL schedule {spec!r} must be a number") from None
        if not math.isfinite(opts[key]):
            raise PyrovaeError(f"option {key} in KL schedule {spec!r} must be finite")
    return opts


def _cyclical(spec: str, beta: float, total_steps: int, opts: dict[str, float]) -> Cyclical:
    cycles, ratio = opts.get("cycles", min(4, total_steps)), opts.get("ratio", 0.5)
    if cycles < 1 or cycles != int(cycles):
        raise PyrovaeError(f"cyclical schedule needs a whole number of cycles >= 1, got {cycles:g}")
    if cycles > total_steps:
        raise PyrovaeError(f"KL schedule {spec!r}: {cycles:g} cycles do not fit in the run's "
                           f"{total_steps} steps: give at most one cycle per step")
    if not 0 < ratio <= 1:
        raise PyrovaeError(f"cyclical schedule needs ratio in (0, 1], got {ratio:g}")
    return Cyclical(beta, total_steps, int(cycles), float(ratio))


def _rise(spec: str, opts: dict[str, float], total_steps: int, steps_per_epoch: int) -> int:
    """The number of steps a linear or sigmoid schedule rises over."""
    if "steps" in opts and "epochs" in opts:
        raise PyrovaeError(f"KL schedule {spec!r}: give steps or epochs, not both")
    if "steps" in opts and opts["steps"] != int(opts["steps"]):
        raise PyrovaeError(f"KL schedule {spec!r}: steps must be a whole number, got {opts['steps']:g}")
    if "steps" in opts:
        steps = opts["steps"]
    elif "epochs" in opts:
        steps = opts["epochs"] * steps_per_epoch
    else:
        steps = total_steps // 2
    if steps < 1:
        raise PyrovaeError(f"KL schedule {spec!r} must rise over at least 1 step, got {steps:g}"
                           + ("" if opts else ": the run is too short for its default rise, "
                              "give steps=N"))
    if steps > MAX_STEPS:
        raise PyrovaeError(f"KL schedule {spec!r} rises over {steps:g} steps, more than "
                           f"{MAX_STEPS:.0e}: beta would never leave 0; give fewer steps")
    return int(steps)


def parse_schedule(
    spec: str | None, beta: float = 1.0, total_steps: int = 1, steps_per_epoch: int = 1
) -> Schedule:
    """Resolve a spec string (see the module docstring) against a run of ``total_steps`` steps."""
    beta = check_beta(beta)
    if spec is not None and not isinstance(spec, str):
        raise PyrovaeError(f"a KL schedule is a spec string such as 'linear:steps=1000', got {spec!r}")
    spec = "constant" if spec is None else spec.strip()
    if not spec:
        raise PyrovaeError(f"empty KL schedule: choose one of {', '.join(SCHEDULES)} (e.g. constant)")
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if name not in SCHEDULES:
        raise PyrovaeError(
            f"unknown KL schedule {name!r} in {spec!r}: choose one of {', '.join(SCHEDULES)}"
        )
    opts = _options(spec, name, rest, sep)
    total_steps = max(1, int(total_steps))
    if name == "constant":
        return Constant(beta)
    if name == "cyclical":
        return _cyclical(spec, beta, total_steps, opts)
    steps = _rise(spec, opts, total_steps, steps_per_epoch)
    if name == "linear":
        return Linear(beta, steps)
    k = opts.get("k", 10.0)
    if not K_RANGE[0] <= k <= K_RANGE[1]:
        raise PyrovaeError(f"sigmoid schedule needs k > 0, from {K_RANGE[0]:g} (a straight line) to "
                           f"{K_RANGE[1]:g} (a step), got {k:g}")
    return Sigmoid(beta, steps, float(k))
