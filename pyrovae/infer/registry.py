"""Objectives (ELBO estimators) by name: one table from a spec string to a Pyro ``ELBO``.

A spec is ``NAME`` or ``NAME:ARG,ARG`` (e.g. ``"trace"``, ``"iwae:10"``, ``"renyi:0.5,10"``). Every
entry is one class of :mod:`pyrovae.infer.estimators` whose ``differentiable_loss`` reads nothing on
the host; the table also says which entries a CUDA graph can capture (:func:`capture_problem`),
which need reparameterized guide sites and which enumerate discrete sites. Particles are vectorized
whenever there is more than one (a ``pyro.plate`` left of the model's ``max_plate_nesting`` plates).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.infer

from pyrovae.errors import PyrovaeError
from pyrovae.infer.estimators import (
    STL_ELBO,
    DReG_ELBO,
    MeanField_ELBO,
    Renyi_ELBO,
    ScoreFunction_ELBO,
    TailAdaptive_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
)
from pyrovae.memory import MAX_PARTICLES

__all__ = ["capture_problem", "describe_estimators", "enumerates", "estimator_names", "make_elbo",
           "spec_name"]


@dataclass(frozen=True)
class _Arg:
    """One positional argument of a spec: its name, type, and a check returning an error."""

    name: str
    kind: type
    check: Callable[[float], str | None]
    required: bool = False


@dataclass(frozen=True)
class _Entry:
    """``build(num_particles, max_plate_nesting, **args) -> ELBO``; ``K`` is the particle count.

    ``capture``: ``None`` if a CUDA graph can record the step, else why not. ``enumerates``: sums
    discrete sites out (model sites the guide does not sample are allowed).
    """

    build: Callable[..., pyro.infer.ELBO]
    summary: str
    args: tuple[_Arg, ...] = ()
    min_particles: int = 1
    capture: str | None = None
    enumerates: bool = False

    def usage(self, name: str) -> str:
        if not self.args:
            return name
        parts = [a.name if a.required else f"[{a.name}]" for a in self.args]
        return f"{name}:{','.join(parts)}"


def _check_k(k: float) -> str | None:
    if k < 1:
        return f"K (the number of particles) must be >= 1, got {k}"
    if k > MAX_PARTICLES:
        return f"K (the number of particles per step) must be at most {MAX_PARTICLES:,}, got {k:,}"
    return None


def _check_alpha(alpha: float) -> str | None:
    if not math.isfinite(alpha) or alpha < 0:
        return f"alpha must be finite and >= 0 for a lower bound, got {alpha}"
    if alpha == 1:
        return "alpha = 1 is the ELBO itself: use 'trace' (or e.g. alpha = 0.99)"
    return None


def _check_tail_beta(beta: float) -> str | None:
    return None if -1 <= beta < 0 else f"beta must satisfy -1 <= beta < 0, got {beta}"


_K = _Arg("K", int, _check_k)


def _particles(n: int, m: float) -> dict:
    return {"num_particles": n, "vectorize_particles": n > 1, "max_plate_nesting": m}


# name -> entry; the one place an estimator is named.
_REGISTRY: dict[str, _Entry] = {
    "trace": _Entry(
        lambda n, m: Trace_ELBO(**_particles(n, m)),
        "Trace_ELBO: reparameterized ELBO, Monte Carlo KL (Kingma & Welling 2014)",
    ),
    "meanfield": _Entry(
        lambda n, m: MeanField_ELBO(**_particles(n, m)),
        "TraceMeanField_ELBO: ELBO with the analytic KL where Pyro knows it",
    ),
    "tracegraph": _Entry(
        lambda n, m: TraceGraph_ELBO(**_particles(n, m)),
        "TraceGraph_ELBO: ELBO, score terms Rao-Blackwellized along the dependency graph",
        capture="estimator 'tracegraph' tracks provenance and guide baselines in Python objects "
        "that a CUDA graph cannot replay",
    ),
    "enum": _Entry(
        lambda n, m: TraceEnum_ELBO(**_particles(n, m), strict_enumeration_warning=False),
        "TraceEnum_ELBO: discrete sites of guide and model enumerated in parallel, summed exactly",
        capture="estimator 'enum' contracts enumerated tensors with shapes chosen at run time",
        enumerates=True,
    ),
    "score": _Entry(
        lambda n, m: ScoreFunction_ELBO(**_particles(n, m)),
        "ELBO with the reparameterization trick switched off (score-function gradient)",
    ),
    "stl": _Entry(
        lambda n, m: STL_ELBO(**_particles(n, m)),
        "sticking the landing: ELBO gradient without the score term of q (Roeder et al. 2017)",
    ),
    "iwae": _Entry(
        lambda n, m: Renyi_ELBO(alpha=0.0, **_particles(n, m)),
        "importance-weighted bound with K samples (Burda et al. 2016)",
        (_K,),
    ),
    "renyi": _Entry(
        lambda n, m, alpha: Renyi_ELBO(alpha=alpha, **_particles(n, m)),
        "Renyi alpha bound with K samples (Li & Turner 2016)",
        (_Arg("alpha", float, _check_alpha, required=True), _K),
    ),
    "dreg": _Entry(
        lambda n, m: DReG_ELBO(**_particles(n, m)),
        "IWAE bound with doubly reparameterized guide gradients (Tucker et al. 2019)",
        (_K,),
    ),
    "tail-adaptive": _Entry(
        lambda n, m, beta=-1.0: TailAdaptive_ELBO(num_particles=n, vectorize_particles=True,
                                                  max_plate_nesting=m, tail_adaptive_beta=beta),
        "tail-adaptive f-divergence gradient (Wang et al. 2018); reported loss is the ELBO",
        (_K, _Arg("beta", float, _check_tail_beta)),
        min_particles=2,
    ),
}

# names that earlier versions accepted, with what replaces them
_RENAMED = {
    "graph": "'graph' is now 'tracegraph' (TraceGraph_ELBO), so that it cannot be confused with "
    "--compile graph",
    "jit": "'jit' (torch.jit.trace, deprecated by PyTorch) was removed: use 'trace', the same "
    "objective, and --compile graph for speed on a GPU",
}


def estimator_names() -> list[str]:
    """Names accepted by :func:`make_elbo` (without arguments)."""
    return sorted(_REGISTRY)


def describe_estimators() -> dict[str, str]:
    """Usage string (e.g. ``"renyi:alpha,[K]"``) -> one-line description, for help texts."""
    return {_REGISTRY[name].usage(name): _REGISTRY[name].summary for name in estimator_names()}


def _parse_args(name: str, entry: _Entry, spec: str, texts: list[str]) -> dict:
    usage = entry.usage(name)
    if len(texts) > len(entry.args):
        if not entry.args:
            raise PyrovaeError(
                f"estimator {name!r} takes no arguments, got {spec!r}; set the particle count "
                "with num_particles (--particles)"
            )
        raise PyrovaeError(
            f"estimator {name!r} takes at most {len(entry.args)} arguments ({usage}), "
            f"got {spec!r}"
        )
    values = {}
    for arg, text in zip(entry.args, texts, strict=False):
        try:
            value = arg.kind(text)
        except ValueError:
            kind = "an integer" if arg.kind is int else "a number"
            raise PyrovaeError(
                f"estimator {name!r}: {arg.name} must be {kind}, got {text!r} in {spec!r} "
                f"(usage: {usage})"
            ) from None
        error = arg.check(value)
        if error is not None:
            raise PyrovaeError(f"estimator {name!r}: {error} (in {spec!r})")
        values[arg.name] = value
    for arg in entry.args[len(texts) :]:
        if arg.required:
            raise PyrovaeError(
                f"estimator {name!r} needs {arg.name}: write {usage!r}, e.g. 'renyi:0.5,10'"
            )
    return values


def make_elbo(
    spec: str = "trace", num_particles: int = 1, max_plate_nesting: int | None = None
) -> pyro.infer.ELBO:
    """Build the Pyro ELBO named by ``spec``.

    :param spec: ``NAME`` or ``NAME:ARGS``; see :func:`describe_estimators`. A ``K`` in the spec
        is the particle count and wins over ``num_particles``, which must then be 1 or equal.
    :param num_particles: particles per step for specs without ``K`` (vectorized when > 1).
    :param max_plate_nesting: the deepest plate nesting of model and guide (the VAE's data plate:
        1); ``None`` lets Pyro find it from a first trace.
    :raises PyrovaeError: for unknown names, malformed or out-of-range arguments.
    """
    if not isinstance(spec, str):
        raise PyrovaeError(f"estimator spec must be a string such as 'iwae:10', got {spec!r}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise PyrovaeError(f"num_particles must be an integer >= 1, got {num_particles!r}")
    if num_particles > MAX_PARTICLES:
        raise PyrovaeError(f"num_particles must be at most {MAX_PARTICLES:,}, got {num_particles:,}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if name in _RENAMED:
        raise PyrovaeError(f"unknown estimator {name!r}: {_RENAMED[name]}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise PyrovaeError(
            f"unknown estimator {name!r} in {spec!r}: {hint}choose one of "
            f"{', '.join(describe_estimators())}"
        )
    entry = _REGISTRY[name]
    if sep and not rest.strip():
        raise PyrovaeError(f"estimator spec {spec!r} has an empty argument list after ':': write "
                           f"{name!r} alone or {entry.usage(name)!r}")
    texts = [t.strip() for t in rest.split(",")] if sep else []
    args = _parse_args(name, entry, spec, texts)
    k = args.pop("K", None)
    if k is not None and num_particles not in (1, k):
        raise PyrovaeError(
            f"the particle count is given twice: K={k} in {spec!r} and num_particles="
            f"{num_particles}; drop one of them"
        )
    n = num_particles if k is None else k
    if n < entry.min_particles:
        raise PyrovaeError(
            f"estimator {name!r} needs at least {entry.min_particles} particles, got {n}: "
            f"write e.g. '{name}:10'"
        )
    m = float("inf") if max_plate_nesting is None else max_plate_nesting
    return entry.build(n, m, **args)


def spec_name(spec: str) -> str:
    """The registry name of a spec: ``"iwae:5"`` -> ``"iwae"`` (the spec is checked)."""
    make_elbo(spec)
    return spec.strip().partition(":")[0].strip()


def capture_problem(spec: str) -> str | None:
    """``None`` if estimator ``spec`` can be recorded in a CUDA graph, else one short reason."""
    return _REGISTRY[spec_name(spec)].capture


def enumerates(spec: str) -> bool:
    """Whether estimator ``spec`` sums discrete sites out (so model-only discrete sites are allowed)."""
    return _REGISTRY[spec_name(spec)].enumerates
