"""Codes and samples of any model: posterior summaries from its guide, prior samples from its model.

:func:`encode` reads the guide's distribution at a latent site; :func:`sample` runs the model with
its observations removed (``poutine.uncondition``), so the latent sites are drawn from the model's
own prior, whatever it is (a VampPrior's mixture, a hierarchy, an enumerated cluster).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import pyro
import torch
from pyro import poutine

from pyrovae import checks, memory
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.metrics import Data, as_batch, encode_sites, evaluating, program_of
from pyrovae.infer.traces import latent_sites
from pyrovae.models.contract import with_own_params

__all__ = ["encode", "reconstruct", "remember_inputs", "sample"]

# one example's shape and dtype per input, for the models that trained or were loaded here
_INPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_inputs(model: Any, batch: tuple[torch.Tensor, ...]) -> None:
    """Record the shapes of the model's inputs, so :func:`sample` can build placeholders later."""
    try:
        _INPUTS[model] = tuple(t[:1] for t in batch)
    except TypeError:  # an object that takes no weak references: pass like= to sample()
        pass


@with_own_params
def encode(model: Any, data: Data, site: str | None = None, batch_size: int = 1000
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations ``(N, D)`` of latent ``site`` for the inputs ``data``.

    ``site`` may be left out when the guide has one latent site. A point code (an auto-encoder's
    ``Delta``) has standard deviations 0.
    """
    batch = as_batch(data)
    program = program_of(model, batch)
    site = _pick(site, program.latent, "latent")
    return encode_sites(model, batch, program, batch_size)[site]


def _pick(site: str | None, names: tuple[str, ...], what: str) -> str:
    if site is None:
        if len(names) != 1:
            raise PyrovaeError(f"the model has {what} sites {list(names)}: pass site= to choose one")
        return names[0]
    if site not in names:
        raise PyrovaeError(f"no {what} site {site!r}: the model's {what} sites are {list(names)}")
    return site


def template(model: Any, n: int, like: Data | None = None) -> tuple[torch.Tensor, ...]:
    """A batch of ``n`` placeholder inputs (zeros) shaped like one example of ``like``, or like the
    built-ins' images (``model.shape``) when ``like`` is not given."""
    if like is None:
        like = _INPUTS.get(model)
    if like is not None:
        return tuple(torch.zeros((n, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in as_batch(like))
    shape = getattr(model, "shape", None)
    if shape is None:
        raise PyrovaeError("sample() needs to know the model's inputs: pass like=data (a batch the model "
                           "takes) or inputs=(...) with n examples")
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else None
    return (torch.zeros((n, *shape), device=device),)


@with_own_params
def sample(model: Any, n: int = 64, seed: int | None = None, *, inputs: Data | None = None,
           like: Data | None = None, site: str | None = None, mean: bool = True) -> torch.Tensor:
    """``n`` samples of observed ``site`` from the model's prior: the model runs unconditioned on
    ``inputs`` (``n`` examples; by default zeros shaped like ``like``, e.g. labels for a conditional
    model), and each draw is the observation's mean given the latents (``mean=False``: a draw).

    Shape ``(n, *event_shape)`` (images ``(n, C, H, W)`` for the built-ins); repeatable with ``seed``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PyrovaeError(f"the number of samples ({checks.label('n')}) must be a whole number >= 1, "
                           f"got {n!r}")
    if inputs is None:  # placeholders are about to be made: check they and the samples fit first
        _check_sample_memory(model, n, like)
    batch = as_batch(inputs) if inputs is not None else template(model, n, like)
    if len(batch[0]) != n:
        raise PyrovaeError(f"inputs hold {len(batch[0])} examples for n={n} samples: give n examples")
    device = batch[0].device
    with torch.no_grad(), evaluating(model), pyro.validation_enabled(False), \
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            pyro.set_rng_seed(seed)
        program = program_of(model, batch)
        name = _pick(site, program.observed, "observed")
        trace = poutine.trace(poutine.uncondition(model.model)).get_trace(*batch)
        node = trace.nodes[name]
        value = node["value"]
        if mean:
            try:
                value = node["fn"].mean
            except NotImplementedError:
                pass
        event = len(node["fn"].event_shape)
        return value.movedim(program.batch_dim - event, 0) if value.dim() > event else value


def _check_sample_memory(model: Any, n: int, like: Data | None) -> None:
    """:func:`pyrovae.memory.check_sample` for ``n`` samples shaped like the model's inputs."""
    like = like if like is not None else _INPUTS.get(model)
    shapes = [t.shape[1:] for t in as_batch(like)] if like is not None else \
        [getattr(model, "shape", None) or ()]
    pixels = max(1, sum(math.prod(int(d) for d in s) for s in shapes))
    spec = getattr(model, "spec", None)
    spec = spec if isinstance(spec, dict) else {}
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = "cpu" if param is None else param.device
    memory.check_sample(n, pixels, spec.get("hidden") or (), int(spec.get("z_dim") or 0), device)


@with_own_params
def reconstruct(model: Any, data: Data, site: str | None = None, batch_size: int = 1000) -> torch.Tensor:
    """The mean of observed ``site`` given the guide's posterior means of every latent site (a
    discrete site keeps its draw): ``E[x | z = E_q[z | x]]``, shaped like the observation."""
    batch = as_batch(data)
    program = program_of(model, batch)
    name = _pick(site, program.observed, "observed")
    parts = []
    with torch.no_grad(), evaluating(model), pyro.validation_enabled(False):
        for i in range(0, len(batch[0]), batch_size):
            part = tuple(t[i:i + batch_size] for t in batch)
            guide_tr = poutine.trace(model.guide).get_trace(*part)
            for node in latent_sites(guide_tr):
                if node["fn"].has_rsample:
                    try:
                        node["value"] = node["fn"].mean
                    except NotImplementedError:
                        pass
            model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(*part)
            node = model_tr.nodes[name]
            try:
                value = node["fn"].mean
            except NotImplementedError:
                value = node["fn"].sample()
            event = len(node["fn"].event_shape)
            parts.append(value.movedim(program.batch_dim - event, 0) if value.dim() > event else value)
    return torch.cat(parts)
