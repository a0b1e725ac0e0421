"""Held-out evaluation of any model: ELBO and its parts, importance-sampled ``log p(x)``, active units.

All numbers are per example, in nats, read from traces of the model's own Pyro program (no site is
known by name): the ELBO sums every site, the reconstruction every observed site, the KL every
latent site (in closed form where torch has it and it is valid, by Monte Carlo otherwise; the
result says which). Evaluation weighs every site by its model density, whatever beta training used.

* Discrete model sites the guide does not sample are summed out exactly (the ELBO through
  ``TraceEnum_ELBO``, ``log p(x)`` by enumerating them in every importance sample); discrete guide
  sites are sampled from the guide, like continuous ones.
* A model whose latent sites are all masked (an auto-encoder) has no ELBO and no ``log p(x)``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from torch import nn
from torch.distributions import kl_divergence

from pyrovae import checks, memory
from pyrovae.errors import PyrovaeError
from pyrovae.infer.estimators import TraceEnum_ELBO
from pyrovae.infer.traces import dependences, latent_sites, observed_sites, sample_sites, site_log_prob
from pyrovae.models.contract import Program, inspect_program, rng_untouched, traces, with_own_params

__all__ = ["MAX_ELEMENTS", "MAX_IWAE_K", "active_units", "as_batch", "elbo_terms", "evaluate",
           "log_likelihood", "log_weights", "program_of"]

# Largest number of site elements held at once when estimating log p(x): bounds memory,
MAX_ELEMENTS = 1 << 22  # and speed: chunks that fit the caches (benchmarks/bench_eval_chunks.py)
# More importance samples per example than any estimate needs (the literature uses 5,000): a
# request above it is a typo or a unit slip, and would run for hours without a word.
MAX_IWAE_K = 10**7
# Bytes held per site element while a chunk of log weights is computed, in units of the weights'
# element size: the site values and log-densities, the networks' activations and the temporaries
# of their log-densities (an estimate: 2 to 5 measured for MLP VAEs on 8x8 and 28x28 images).
_BYTES_PER_ELEMENT = 8

Data = torch.Tensor | Sequence[torch.Tensor]


def as_batch(data: Data) -> tuple[torch.Tensor, ...]:
    """A tensor or a sequence of tensors (the model's inputs) -> a tuple of equal-length tensors."""
    batch = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    if not batch or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in batch):
        raise PyrovaeError("data must be a tensor, or a tuple of tensors (the model's inputs), each "
                           "with the examples along dim 0")
    if len({len(t) for t in batch}) != 1:
        raise PyrovaeError(f"the model's inputs hold different numbers of examples "
                           f"({[len(t) for t in batch]}): they must agree along dim 0")
    if len(batch[0]) == 0:
        raise PyrovaeError("cannot evaluate on an empty set of examples")
    return batch


def _chunks(batch: tuple[torch.Tensor, ...], size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    n = len(batch[0])
    for i in range(0, n, size):
        yield tuple(t[i:i + size] for t in batch)


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """``model.eval()`` (no corruption, no dropout) for the block, then the caller's mode back."""
    training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def program_of(model: Any, batch: tuple[torch.Tensor, ...]) -> Program:
    """The contract check on the first examples of ``batch`` (three when there are three)."""
    with evaluating(model):
        return inspect_program(model, tuple(t[:3] for t in batch))


def _no_prior(model_tr) -> bool:
    sites = latent_sites(model_tr)
    return bool(sites) and all(s["mask"] is False for s in sites)


def _closed_form_sites(model: Any, batch: tuple[torch.Tensor, ...], program: Program) -> dict[str, bool]:
    """Per latent site: may its KL term be taken in closed form? Only if torch knows
    ``KL(q || p)`` for the pair and no later guide site depends on its value (integrating the site
    out must not change the distribution of what the guide draws after it)."""
    with torch.enable_grad(), evaluating(model), rng_untouched(batch):
        model_tr, guide_tr = traces(model, tuple(t[:2] for t in batch))
        depended_on = {on for _, on in dependences(guide_tr)}
    sites = [s for s in latent_sites(guide_tr) if s["name"] in model_tr.nodes]
    closed = {}
    for i, site in enumerate(sites):
        try:
            kl_divergence(site["fn"], model_tr.nodes[site["name"]]["fn"])
        except NotImplementedError:
            closed[site["name"]] = False
            continue
        if i == len(sites) - 1:  # nothing is drawn after it
            closed[site["name"]] = True
        elif not site["value"].requires_grad:  # dependence unknown (a discrete site): Monte Carlo
            closed[site["name"]] = False
        else:
            closed[site["name"]] = site["name"] not in depended_on
    return closed


@with_own_params
@torch.no_grad()
def elbo_terms(model: Any, data: Data, batch_size: int = 1000) -> dict[str, Any]:
    """Mean ELBO, reconstruction ``E_q[log p(x|z)]`` and KL per example (one guide draw each).

    ``data``: the model's inputs (a tensor, or a tuple of tensors). ``kl_method`` maps each latent
    site to ``"closed form"`` or ``"monte carlo"``. With discrete model sites that the guide does not
    sample, the ELBO is exact in them (``TraceEnum_ELBO``) and ``recon``/``kl`` are ``None``. A model
    with every latent site masked (an auto-encoder) has ``elbo`` and ``kl`` ``None`` and ``recon`` the
    log-likelihood of the data under the decoding of its point code.
    """
    batch = as_batch(data)
    _check_batch_size(batch_size)
    program = program_of(model, batch)
    n = len(batch[0])
    device = batch[0].device
    with evaluating(model), pyro.validation_enabled(False):
        if program.model_only:
            elbo = TraceEnum_ELBO(max_plate_nesting=program.max_plate_nesting)
            total = torch.zeros((), dtype=torch.float64, device=device)
            for part in _chunks(batch, batch_size):
                total -= elbo.differentiable_loss(model.model, model.guide, *part)
            return {"elbo": total.item() / n, "recon": None, "kl": None,
                    "kl_method": {name: "enumerated" for name in program.model_only}}
        closed = _closed_form_sites(model, batch, program)
        # sums stay on the device and are read once at the end: no host sync per batch
        recon = torch.zeros((), dtype=torch.float64, device=device)
        kl = torch.zeros_like(recon)
        no_prior = False
        for part in _chunks(batch, batch_size):
            model_tr, guide_tr = traces(model, part)
            no_prior = _no_prior(model_tr)
            for site in observed_sites(model_tr):
                recon += site_log_prob(site, scaled=False).sum()
            for q in latent_sites(guide_tr):
                p = model_tr.nodes.get(q["name"])
                if p is None:
                    kl += site_log_prob(q, scaled=False).sum()  # an auxiliary guide site
                elif closed.get(q["name"]):
                    kl += _masked(kl_divergence(q["fn"], p["fn"]), p["mask"]).sum()
                else:
                    kl += (site_log_prob(q, scaled=False) - site_log_prob(p, scaled=False)).sum()
    recon_v, kl_v = recon.item() / n, kl.item() / n
    method = {name: "closed form" if c else "monte carlo" for name, c in closed.items()}
    if no_prior:
        return {"elbo": None, "recon": recon_v, "kl": None, "kl_method": method}
    return {"elbo": recon_v - kl_v, "recon": recon_v, "kl": kl_v, "kl_method": method}


def _masked(value: torch.Tensor, mask: Any) -> torch.Tensor:
    if mask is None or mask is True:
        return value
    if mask is False:
        return torch.zeros_like(value)
    return torch.where(mask, value, value.new_zeros(()))


def _particles(fn, k: int, dim: int):
    def wrapped(*args):
        with pyro.plate("particles", k, dim=dim):
            return fn(*args)
    return wrapped


@torch.no_grad()
def log_weights(model: Any, batch: tuple[torch.Tensor, ...], k: int, program: Program) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` for ``k`` guide draws per example: shape ``(k, N)``.

    Every site counts, with its model density (no beta); dims of plates inside the batch plate are
    summed; discrete model sites the guide does not sample are enumerated and summed out exactly.
    Vectorized: one ``pyro.plate("particles", k)`` left of the model's plates.
    """
    mpn, batch_dim = program.max_plate_nesting, program.batch_dim
    dim = -mpn - 1
    guide = _particles(model.guide, k, dim)
    model_fn = _particles(model.model, k, dim)
    with pyro.validation_enabled(False):
        guide_tr = poutine.trace(guide).get_trace(*batch)
        replayed = poutine.replay(model_fn, trace=guide_tr)
        if program.model_only:
            replayed = poutine.enum(config_enumerate(replayed, "parallel"), first_available_dim=dim - 1)
        model_tr = poutine.trace(replayed).get_trace(*batch)
    if program.model_only:
        for name in program.model_only:
            inner = [f.name for f in model_tr.nodes[name]["cond_indep_stack"]
                     if f.vectorized and f.name not in (program.batch_plate, "particles")]
            if inner:
                raise PyrovaeError(f"model site {name!r} is enumerated inside plate(s) {inner}: log p(x) "
                                   "sums enumerated sites out per example only; sample it in the guide")
    inner_dims = [d for d in range(-mpn, 0) if d != batch_dim]
    total: Any = 0.0
    for sign, sites in ((1, sample_sites(model_tr)), (-1, latent_sites(guide_tr))):
        for site in sites:
            lp = site_log_prob(site, scaled=False)
            dims = [d for d in inner_dims if -lp.dim() <= d]
            if dims:
                lp = lp.sum(dims, keepdim=True)
            total = total + sign * lp
    if total.dim() < mpn + 1:
        total = total.reshape((1,) * (mpn + 1 - total.dim()) + total.shape)
    if total.dim() > mpn + 1:  # enumeration dims, left of the particles: sum them out
        total = torch.logsumexp(total, dim=list(range(total.dim() - mpn - 1)))
    total = total.movedim(batch_dim, -1).reshape(total.shape[0], -1)
    return total.expand(k, len(batch[0]))


@dataclass(frozen=True)
class _Plan:
    """How ``log p(x)`` is computed: ``examples`` per chunk, each with ``draws`` draws at once."""

    examples: int
    draws: int


def _free_bytes(device: torch.device) -> int | None:
    """Memory available for new tensors on ``device`` (None where it cannot be told)."""
    if device.type not in ("cpu", "cuda"):
        return None
    unused = 0
    if device.type == "cuda":  # held by torch's allocator but unused: free for new tensors too
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return memory.available_bytes(device) + unused


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


def _check_k(k: Any, name: str, n: int) -> int:
    """``k`` importance samples for each of ``n`` examples: a whole number in [1, MAX_IWAE_K]."""
    what = checks.label(name, "--iwae-k")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PyrovaeError(f"the number of importance samples ({what}) must be a whole number >= 1, "
                           f"got {k!r}")
    if k > MAX_IWAE_K:
        raise PyrovaeError(f"{what}={k:,} importance samples per example ({k * n:,} passes of the model "
                           f"and guide for {n:,} examples) is more than any estimate of log p(x) needs "
                           f"(5,000 is the usual choice): pass {what} <= {MAX_IWAE_K:,}")
    return k


def _plan(model: Any, batch: tuple[torch.Tensor, ...], k: int, max_elements: int,
          name: str) -> _Plan | None:
    """Chunk sizes for ``k`` draws per example, from the size of the sites of two examples; None
    for a model that defines no ``p(x)``. Refuses, before allocating anything, a request whose
    smallest chunk (one draw of one example) does not fit in ``max_elements`` or in free memory,
    naming the gibibytes it needs."""
    checks.whole(max_elements, "max_elements")
    with evaluating(model), rng_untouched(batch):
        model_tr, guide_tr = traces(model, tuple(t[:2] for t in batch))
    if _no_prior(model_tr):
        return None
    n = len(batch[0])
    values = [s["value"] for tr in (model_tr, guide_tr) for s in sample_sites(tr)]
    per_draw = max(1, sum(v.numel() for v in values) // min(2, n))  # site elements per example and draw
    if per_draw > max_elements:
        raise PyrovaeError(f"one importance sample of one example holds {per_draw:,} site elements, more "
                           f"than max_elements={max_elements:,}: raise max_elements")
    per_chunk = max(1, max_elements // (per_draw * k))  # examples per chunk with all k at once
    plan = _Plan(per_chunk, k) if per_chunk > 1 else _Plan(1, min(k, max_elements // per_draw))
    itemsize = max((v.element_size() for v in values if v.is_floating_point()),
                   default=torch.get_default_dtype().itemsize)
    need = min(plan.examples, n) * plan.draws * per_draw * itemsize * _BYTES_PER_ELEMENT
    free = _free_bytes(batch[0].device)
    if free is not None and need > free:
        smallest = per_draw * itemsize * _BYTES_PER_ELEMENT
        what = checks.label(name, "--iwae-k")
        if smallest > free:
            raise PyrovaeError(f"log p(x) needs about {_gib(smallest)} for one importance sample of one "
                               f"example but {_gib(free)} is free on {batch[0].device}: free memory, or "
                               "evaluate on a device with more")
        draws = max(1, int(free // smallest) // 2)  # half of what is free: leave room for the rest
        plan = _Plan(1, min(k, draws))
        warnings.warn(f"log p(x) with {what}={k:,} would need about {_gib(need)} per chunk but "
                      f"{_gib(free)} is free: computing {plan.draws:,} draws at a time", stacklevel=3)
    return plan


@with_own_params
@torch.no_grad()
def log_likelihood(model: Any, data: Data, k: int = 1000, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Importance-sampled estimate of ``log p(x)`` per example, ``(N,)``, with ``k`` guide draws.

    ``logmeanexp_k [log p(x, z_k) - log q(z_k | x)]`` with ``z_k ~ q(z|x)`` (Burda et al. 2016): a
    lower bound in expectation that tightens as ``k`` grows (``k = 1`` is the ELBO). Examples and
    draws go in chunks of about ``max_elements`` site elements, to bound memory; ``k`` is at most
    :data:`MAX_IWAE_K`, and a chunk of one draw must fit in free memory.
    """
    batch = as_batch(data)
    plan = _plan(model, batch, _check_k(k, "k", len(batch[0])), max_elements, "k")
    if plan is None:
        raise PyrovaeError("this model's latent sites are all masked (an auto-encoder): it defines "
                           "no likelihood p(x) to estimate; evaluate a VAE, or compare reconstructions")
    return _log_likelihood(model, batch, k, plan)


def _log_likelihood(model: Any, batch: tuple[torch.Tensor, ...], k: int, plan: _Plan) -> torch.Tensor:
    program = program_of(model, batch)
    out = []
    with evaluating(model):
        for part in _chunks(batch, plan.examples):
            parts = [log_weights(model, part, min(plan.draws, k - j), program)
                     for j in range(0, k, plan.draws)]
            out.append(torch.logsumexp(torch.cat(parts), dim=0) - math.log(k))  # the weights' dtype
    return torch.cat(out)


def encode_sites(model: Any, batch: tuple[torch.Tensor, ...], program: Program, batch_size: int = 1000,
                 mc_samples: int = 64) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per latent guide site, posterior means and standard deviations, ``(N, D)`` each (the site's
    event and inner-plate dims flattened). Distributions without a closed-form mean (a flow) are
    summarized from ``mc_samples`` draws; discrete sites give the mean of their values."""
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    # the guide draws its latents while we read their distributions: keep the caller's stream
    with torch.no_grad(), evaluating(model), pyro.validation_enabled(False), rng_untouched(batch):
        for part in _chunks(batch, batch_size):
            guide_tr = poutine.trace(model.guide).get_trace(*part)
            for site in latent_sites(guide_tr):
                fn = site["fn"]
                try:
                    mean, std = fn.mean, fn.stddev
                    closed = bool(torch.isfinite(mean).all() and torch.isfinite(std).all())
                except NotImplementedError:  # a flow
                    closed = False
                if not closed:  # no closed form (a flow), or a NaN one (torch's Categorical)
                    draws = fn.sample((mc_samples,)).to(torch.get_default_dtype())
                    mean, std = draws.mean(0), draws.std(0)
                dim, n = program.batch_dim - len(fn.event_shape), len(part[0])
                rows = [t.movedim(dim, 0).reshape(n, -1) for t in (mean, std)]
                parts.setdefault(site["name"], []).append((rows[0], rows[1]))
    return {name: (torch.cat([m for m, _ in v]), torch.cat([s for _, s in v])) for name, v in parts.items()}


@with_own_params
def active_units(model: Any, data: Data, threshold: float = 0.01, batch_size: int = 1000,
                 per_site: bool = False) -> int | dict[str, int]:
    """Latent dims whose posterior mean varies over the data: ``Var_x E_q[z_d] > threshold``
    (Burda et al. 2016, section 5.2), summed over the latent sites (or per site)."""
    batch = as_batch(data)
    program = program_of(model, batch)
    codes = encode_sites(model, batch, program, batch_size)
    counts = {name: int((loc.float().var(dim=0) > threshold).sum()) if len(loc) > 1 else 0
              for name, (loc, _) in codes.items()}
    return counts if per_site else sum(counts.values())


def _check_batch_size(batch_size: int) -> None:
    checks.whole(batch_size, "batch_size")


@with_own_params
def evaluate(model: Any, data: Data, iwae_k: int | None = None, batch_size: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """Held-out summary: ``n``, ELBO, recon, KL (``kl_method``), active units (total and per site)
    and, with ``iwae_k`` (a whole number >= 1; ``None`` skips it), the importance-sampled
    ``log p(x)`` and its standard error over examples.

    Seeds Pyro's generators with ``seed`` so the Monte Carlo estimates are reproducible.
    """
    batch = as_batch(data)
    checks.seed(seed)
    _check_batch_size(batch_size)
    plan = None
    if iwae_k is not None:  # refuse a bad request before any work
        plan = _plan(model, batch, _check_k(iwae_k, "iwae_k", len(batch[0])), MAX_ELEMENTS, "iwae_k")
    pyro.set_rng_seed(seed)
    result: dict[str, Any] = {"n": len(batch[0]), **elbo_terms(model, batch, batch_size)}
    per_site = active_units(model, batch, batch_size=batch_size, per_site=True)
    result["active_units"] = sum(per_site.values())
    result["active_units_per_site"] = per_site
    if plan is not None and result["elbo"] is not None:
        with torch.no_grad():
            log_px = _log_likelihood(model, batch, iwae_k, plan)
        result["iwae_k"] = iwae_k
        result["log_px"] = log_px.mean().item()
        result["log_px_se"] = (log_px.std().item() / math.sqrt(len(log_px))) if len(log_px) > 1 else None
    return result
