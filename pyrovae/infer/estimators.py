"""The ELBO estimators, one Pyro ``ELBO`` class each, with a ``differentiable_loss`` that reads
nothing on the host.

Every class returns, from ``differentiable_loss(model, guide, *args, **kwargs)``, a 0-dim tensor on
the data's device: minus the objective (nats, summed over the batch) whose gradient is the
estimator's gradient. ``loss`` and ``loss_and_grads`` are derived from it (one host read each), so
the eager training step, the CUDA-graph step, the gradient diagnostics and the notebooks all run
the same code. Run with Pyro's validation disabled (as the training loop does) for no host reads
at all: validation checks values.

* :class:`Trace_ELBO` -- Pyro's ``Trace_ELBO`` (reparameterized where the guide allows, score
  function with plate-wise Rao-Blackwellization elsewhere).
* :class:`MeanField_ELBO` -- analytic KL per site where ``kl_divergence`` is registered.
* :class:`TraceGraph_ELBO`, :class:`TraceEnum_ELBO` -- Pyro's, with host-free losses; ``enum``
  enumerates the guide's discrete sites in parallel (``config_enumerate``).
* :class:`ScoreFunction_ELBO` -- the reparameterization trick switched off.
* :class:`STL_ELBO` -- sticking the landing (Roeder, Wu & Duvenaud 2017).
* :class:`Renyi_ELBO` -- the Renyi bound (Li & Turner 2016); IWAE at ``alpha = 0`` (Burda et al. 2016).
* :class:`DReG_ELBO` -- IWAE with doubly reparameterized guide gradients (Tucker et al. 2019).
* :class:`TailAdaptive_ELBO` -- the tail-adaptive f-divergence gradient (Wang, Liu & Liu 2018).

``poutine.scale`` on a site (beta, through :class:`pyrovae.infer.beta.KLWeight`) multiplies that
site's log-densities, so for the importance-weighted bounds the log weight becomes
``log p(x|z) + beta * (log p(z) - log q(z|x))``; every gradient below is unbiased for that scaled
objective.
"""

from __future__ import annotations

import math
from typing import Any

import pyro.infer
import torch
from opt_einsum import shared_intermediates
from pyro.distributions import TorchDistribution
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import config_enumerate
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_model_factors
from pyro.infer.util import Dice, _fulldot
from pyro.ops import packed
from pyro.ops.contract import contract_tensor_tree
from pyro.ops.einsum.adjoint import require_backward
from pyro.ops.rings import MarginalRing, SampleRing
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from torch.distributions import kl_divergence

from pyrovae.errors import PyrovaeError
from pyrovae.infer.traces import (
    align,
    latent_sites,
    log_weight,
    path_scale,
    require_independent,
    require_reparameterized,
)

__all__ = [
    "DReG_ELBO", "MeanField_ELBO", "NonReparameterized", "Renyi_ELBO", "STL_ELBO",
    "ScoreFunction_ELBO", "TailAdaptive_ELBO", "TraceEnum_ELBO", "TraceGraph_ELBO", "Trace_ELBO",
    "no_rsample",
]


def _no_sites() -> PyrovaeError:
    return PyrovaeError("model and guide have no sample sites: there is no loss to compute (observe "
                        "the data with pyro.sample(name, dist, obs=x))")


def _combine(loss: Any, surrogate: Any) -> torch.Tensor:
    """The value of ``loss`` (detached) with the gradient of ``surrogate``, as one tensor."""
    if not isinstance(loss, torch.Tensor):
        raise _no_sites()
    loss = loss.detach()
    if isinstance(surrogate, torch.Tensor) and surrogate.requires_grad:
        return loss + (surrogate - surrogate.detach())
    return loss


class HostFreeLoss:
    """``loss`` and ``loss_and_grads`` from ``differentiable_loss``, the one implementation."""

    retain_graph: bool | None

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the objective (nats), as a Python float."""
        return float(self.differentiable_loss(model, guide, *args, **kwargs).detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Accumulate the estimator's gradient into the parameters; return minus the objective."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


class _ParticleSum(HostFreeLoss):
    """Averages a per-particle ``(loss, surrogate)`` over the particles."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss: Any = 0.0
        surrogate: Any = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            lp, sp = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + lp / self.num_particles
            surrogate = surrogate + sp / self.num_particles
        return _combine(loss, surrogate)


class Trace_ELBO(_ParticleSum, pyro.infer.Trace_ELBO):
    """Pyro's ``Trace_ELBO``: reparameterized gradients where the guide has ``rsample``, score-function
    terms (Rao-Blackwellized over plates) elsewhere (Kingma & Welling 2014; Ranganath et al. 2014)."""

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace):
        elbo: Any = 0.0
        surrogate: Any = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"])
                                         * score_function_term).sum()
        return -_detached(elbo), -surrogate


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


class MeanField_ELBO(_ParticleSum, pyro.infer.TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO``: the KL between guide and prior in closed form at every site
    where ``kl_divergence`` is registered, Monte Carlo elsewhere. Needs reparameterized sites and a
    mean-field guide (no guide site depending on another latent value)."""

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        require_reparameterized(guide_trace, "meanfield")
        if torch.is_grad_enabled() and len(latent_sites(guide_trace)) > 1:
            require_independent(guide_trace, "meanfield")  # the closed-form KLs need a mean-field q
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace):
        elbo: Any = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                elbo = elbo + model_site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
                continue
            kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
            elbo = elbo - kl.sum()
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        return -_detached(elbo), -elbo


class TraceGraph_ELBO(HostFreeLoss, pyro.infer.TraceGraph_ELBO):
    """Pyro's ``TraceGraph_ELBO``: score-function terms Rao-Blackwellized along the dependency graph,
    with the baselines the guide configures (Schulman et al. 2015; Mnih & Gregor 2014)."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        if not isinstance(elbo, torch.Tensor):
            raise _no_sites()
        return _combine(-elbo, surrogate_loss)


class _MaskedDice(Dice):
    """Pyro's DiCE expectation (Foerster et al. 2018) with zero-probability terms removed by
    ``torch.where`` instead of ``masked_select``: Pyro 1.9.2 asks ``mask.all()`` on the host first,
    and ``masked_select`` has a data-dependent shape; ``where`` gives the same sum with neither."""

    def compute_expectation(self, costs):
        with shared_intermediates() as cache:
            ring = MarginalRing(cache=cache)
            expected: Any = 0.0
            for ordinal, cost_terms in costs.items():
                factors = self._get_log_factors(ordinal)
                scale = math.exp(sum(f for f in factors if not isinstance(f, torch.Tensor)))
                factors = [f for f in factors if isinstance(f, torch.Tensor)]
                # one marginal query per distinct set of dims among the costs
                queries: dict[frozenset, Any] = {frozenset(c._pyro_dims): None for c in cost_terms}
                for factor in factors:
                    if queries.get(frozenset(factor._pyro_dims), False) is None:
                        queries[frozenset(factor._pyro_dims)] = factor
                for key, query in list(queries.items()):
                    if query is None:
                        cost = next(c for c in cost_terms if frozenset(c._pyro_dims) == key)
                        query = torch.zeros_like(cost)
                        query._pyro_dims = cost._pyro_dims
                        factors.append(query)
                        queries[key] = query
                for query in queries.values():
                    require_backward(query)
                ring.sumproduct(factors, set().union(*(f._pyro_dims for f in factors)) - ordinal
                                )._pyro_backward()
                for cost in cost_terms:
                    query = queries[frozenset(cost._pyro_dims)]
                    prob = query._pyro_backward_result.exp()
                    prob._pyro_dims = query._pyro_dims
                    mask = prob > 0
                    mask._pyro_dims = prob._pyro_dims
                    cost, prob, mask = packed.broadcast_all(cost, prob, mask)
                    cost = torch.where(mask, cost, cost.new_zeros(()))  # 0 * -inf would be nan
                    expected = expected + scale * _fulldot(prob, cost)
        return expected


def _dice_elbo(model_trace: Trace, guide_trace: Trace) -> Any:
    """The enumerated ELBO of one particle: Pyro's ``_compute_dice_elbo`` with :class:`_MaskedDice`."""
    costs, log_factors, ordering, sum_dims, scale = _compute_model_factors(model_trace, guide_trace)
    if log_factors:
        dim_to_size = {d: n for terms in log_factors.values() for t in terms
                       for d, n in zip(t._pyro_dims, t.shape, strict=True)}
        with shared_intermediates() as cache:
            ring = SampleRing(cache=cache, dim_to_size=dim_to_size)
            log_factors = contract_tensor_tree(log_factors, sum_dims, ring=ring)
        for t, terms in log_factors.items():
            costs.setdefault(t, []).extend(packed.scale_and_mask(term, scale=scale) for term in terms)
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            costs.setdefault(ordering[name], []).append(packed.neg(site["packed"]["log_prob"]))
    return _MaskedDice(guide_trace, ordering).compute_expectation(costs)


class TraceEnum_ELBO(HostFreeLoss, pyro.infer.TraceEnum_ELBO):
    """Pyro's ``TraceEnum_ELBO``: discrete sites summed out exactly. The guide's discrete sites are
    enumerated in parallel (``config_enumerate``), and so are the model's discrete sites that the
    guide does not sample; sites already configured keep their setting."""

    def _get_traces(self, model, guide, args, kwargs):
        yield from super()._get_traces(config_enumerate(model, "parallel"),
                                       config_enumerate(guide, "parallel"), args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo: Any = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle = _dice_elbo(model_trace, guide_trace)
            if not is_identically_zero(particle):
                elbo = elbo + particle
        if not isinstance(elbo, torch.Tensor):
            raise _no_sites()
        return -elbo / self.num_particles


# ---- score function ------------------------------------------------------------------------------


class NonReparameterized(TorchDistribution):
    """Wraps a distribution and hides its ``rsample``: samples are cut from the graph.

    Log-densities, shapes and support are those of ``base_dist``; Pyro then treats the site as
    non-reparameterizable and uses score-function gradients for it.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, base_dist: torch.distributions.Distribution):
        self.base_dist = base_dist
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base_dist.support

    def expand(self, batch_shape, _instance=None):
        return NonReparameterized(self.base_dist.expand(batch_shape))

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.base_dist.sample(sample_shape)

    def log_prob(self, value):
        return self.base_dist.log_prob(value)

    @property
    def mean(self):
        return self.base_dist.mean

    @property
    def variance(self):
        return self.base_dist.variance


class no_rsample(Messenger):  # noqa: N801 -- a handler, named like Pyro's poutine handlers
    """Handler that marks latent sample sites as non-reparameterized.

    :param sites: names of the sites to mark; ``None`` marks every unobserved site.
    """

    def __init__(self, sites=None):
        super().__init__()
        self.sites = None if sites is None else frozenset(sites)

    def _pyro_sample(self, msg):
        if msg["is_observed"] or (self.sites is not None and msg["name"] not in self.sites):
            return
        if msg["fn"].has_rsample:
            msg["fn"] = NonReparameterized(msg["fn"])


class ScoreFunction_ELBO(Trace_ELBO):
    """:class:`Trace_ELBO` with the reparameterization trick switched off for the guide's latents.

    The guide runs under :class:`no_rsample`, so ``z`` is sampled without a path to ``phi`` and the
    guide gradient is the score-function estimator ``E[(log p - log q) d/dphi log q]`` (Williams
    1992; Ranganath et al. 2014), with Pyro's plate-wise Rao-Blackwellization.

    :param sites: latent site names to treat this way (``None``: all of them).
    """

    def __init__(self, *, sites=None, **kwargs):
        super().__init__(**kwargs)
        self.sites = sites

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, no_rsample(self.sites)(guide), args, kwargs)
        for site in latent_sites(guide_trace):
            if isinstance(_base(site["fn"]), pyro.distributions.Delta):
                raise PyrovaeError(
                    f"estimator 'score' needs guide sites with a density, but {site['name']!r} is a "
                    "point mass (Delta, an auto-encoder's code), whose score is zero: the guide would "
                    "get no gradient; use 'trace'")
        return model_trace, guide_trace


def _base(fn: Any) -> Any:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


# ---- sticking the landing ------------------------------------------------------------------------


def _importance_trace(elbo: ELBO, model, guide, args, kwargs, estimator: str):
    model_trace, guide_trace = get_importance_trace("flat", elbo.max_plate_nesting, model, guide,
                                                    args, kwargs)
    require_reparameterized(guide_trace, estimator)
    return model_trace, guide_trace


def score_terms(guide_trace: Trace, estimator: str) -> list[tuple[dict, torch.Tensor]]:
    """Per latent guide site, the scaled ``log q(stop_grad(z))`` (same shape as ``log_prob``).

    Its gradient is the score ``d/dphi log q_phi(z)`` at fixed ``z``: adding it to a surrogate that
    contains ``-log q_phi(z_phi)`` leaves only the path derivative through ``z``. This needs each
    site's distribution to depend on parameters and data but not on other latent values (true of
    amortized guides); otherwise detaching ``z`` would also cut genuine path terms, so that case is
    rejected with the site's name.
    """
    sites = [s for s in latent_sites(guide_trace) if s["value"].requires_grad]
    if len(sites) > 1:
        require_independent(guide_trace, estimator)
    terms = []
    for site in sites:
        log_q = site["fn"].log_prob(site["value"].detach())
        terms.append((site, scale_and_mask(log_q, site["scale"], site["mask"])))
    return terms


class STL_ELBO(Trace_ELBO):
    r"""The ELBO with the "sticking the landing" gradient (Roeder, Wu & Duvenaud, NeurIPS 2017).

    The reparameterized gradient of ``log p(x, z) - log q_phi(z)`` with ``z = T(eps, phi)`` is
    ``(d/dz)[log p - log q] dz/dphi - d/dphi log q_phi(z)``; the last term (the score of ``q``) has
    mean zero, so dropping it keeps the estimator unbiased and makes its variance vanish when ``q``
    equals the posterior. Loss value and model gradient are :class:`Trace_ELBO`'s.

    Needs reparameterized guide sites whose distributions do not depend on other latent values.
    """

    def _get_trace(self, model, guide, args, kwargs):
        return _importance_trace(self, model, guide, args, kwargs, "stl")

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        for _, score in score_terms(guide_trace, "stl"):
            surrogate = surrogate - score.sum()
        return loss, surrogate


# ---- importance-weighted bounds ------------------------------------------------------------------


class _ImportanceWeighted(HostFreeLoss, ELBO):
    """The particles' log weights ``log w`` with the particles at dim 0 (shared by the bounds)."""

    name = "iwae"

    def _get_trace(self, model, guide, args, kwargs):
        return _importance_trace(self, model, guide, args, kwargs, self.name)

    def _log_weights(self, model, guide, args, kwargs) -> tuple[torch.Tensor, list, bool]:
        traces = list(self._get_traces(model, guide, args, kwargs))
        vectorized = self.vectorize_particles and self.num_particles > 1
        # Pyro counts the vectorized particle plate in max_plate_nesting (at its leftmost dim);
        # unvectorized, the particles are stacked at dim 0 instead
        depth = int(self.max_plate_nesting) if vectorized else 0
        log_ws = [log_weight(m, g, depth) for m, g in traces]
        if not isinstance(log_ws[0], torch.Tensor):
            raise _no_sites()
        log_w = log_ws[0] if vectorized else torch.stack(log_ws)
        return log_w, traces, vectorized


class Renyi_ELBO(_ImportanceWeighted):
    r"""The Renyi alpha bound (Li & Turner 2016), IWAE at ``alpha = 0`` (Burda et al. 2016).

    ``-sum_n 1/(1 - alpha) (logsumexp_k((1 - alpha) log w_{k,n}) - log K)``: its autograd gradient,
    ``-sum_k softmax_k((1 - alpha) log w) d log w_k``, is Pyro's ``RenyiELBO`` surrogate gradient
    for reparameterized guides (non-reparameterized guide sites are refused).
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles)
        self.alpha = float(alpha)
        self.name = "iwae" if self.alpha == 0 else "renyi"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w, _, _ = self._log_weights(model, guide, args, kwargs)
        a = 1.0 - self.alpha
        log_mean = torch.logsumexp(a * log_w, dim=0) - math.log(self.num_particles)
        return -log_mean.sum() / a


class DReG_ELBO(_ImportanceWeighted):
    r"""The IWAE bound with doubly reparameterized guide gradients (Tucker et al., ICLR 2019).

    Bound, per independent data point: ``log (1/K) sum_k w_k`` with ``w_k = p(x, z_k) / q(z_k)``. With
    normalized weights ``wn_k = w_k / sum_j w_j``:

    * model parameters ``theta``: ``sum_k wn_k d/dtheta log w_k`` (the ordinary IWAE gradient);
    * guide parameters ``phi``: ``sum_k wn_k^2 (d log w_k / dz_k) dz_k/dphi`` (eq. 5 of the paper).

    If a latent site carries a scale ``c`` (beta) the score term enters the log weight multiplied by
    ``c`` and the same derivation gives the path weight ``(1 - c) wn_k + c wn_k^2``; a masked site
    (``c = 0``) keeps the IWAE path weight ``wn_k``. With ``K = 1`` this is :class:`STL_ELBO`.
    Needs reparameterized guide sites whose distributions do not depend on other latent values.
    """

    name = "dreg"

    def __init__(self, num_particles: int = 2, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w, traces, vectorized = self._log_weights(model, guide, args, kwargs)
        log_norm = torch.logsumexp(log_w, dim=0, keepdim=True)
        bound = (log_norm - math.log(self.num_particles)).sum().detach()
        if not log_w.requires_grad:
            return -bound
        wn = (log_w - log_norm).exp().detach()
        surrogate = (wn * log_w).sum()  # the IWAE surrogate; its guide gradient is fixed below
        scored = [(i, site, score) for i, (_, guide_trace) in enumerate(traces)
                  for site, score in score_terms(guide_trace, "dreg")]
        if scored:
            grads = torch.autograd.grad(log_w.sum(), [s["value"] for _, s, _ in scored], retain_graph=True)
            for (i, site, score), grad in zip(scored, grads, strict=True):
                w = align(wn if vectorized else wn[i], site)  # the site's batch shape
                surrogate = surrogate + (w * score).sum()  # cancel the score term of q
                c = path_scale(site)
                if not isinstance(c, torch.Tensor) and c == 0:
                    continue  # masked: the path weight stays wn
                event = (1,) * len(site["fn"].event_shape)
                w = w.reshape(w.shape + event)
                if isinstance(c, torch.Tensor):
                    c = c.reshape(c.shape + event)
                # path weight wn -> (1 - c) wn + c wn^2, by a term linear in z
                surrogate = surrogate + (c * (w**2 - w) * grad * site["value"]).sum()
        return -(bound + (surrogate - surrogate.detach()))


class TailAdaptive_ELBO(_ImportanceWeighted):
    r"""The tail-adaptive f-divergence gradient (Wang, Liu & Liu, NeurIPS 2018, algorithm 1).

    Per data point, with ``K`` reparameterized draws and log weights ``log w_k``, the gradient is
    ``-sum_k gamma_k d log w_k`` with ``gamma_k proportional to F(w_k)^beta``, where
    ``F(t) = (1/K) #{j: w_j >= t}`` is the empirical tail probability of the weights and
    ``beta = -1`` by default: the largest weight gets the largest ``gamma``. The objective has no
    tractable value; the loss reported is minus the ELBO estimate ``mean_k log w_k`` of the same
    draws. Model and guide parameters share the weights, as in the paper's VAE experiments.

    (Pyro 1.9.2's ``TraceTailAdaptive_ELBO`` ranks with ``argsort + 1``, the sorting permutation
    rather than the ranks, and over the batch's summed weights; this class computes the ranks per
    data point.)
    """

    name = "tail-adaptive"

    def __init__(self, num_particles: int = 2, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = True, tail_adaptive_beta: float = -1.0):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles)
        self.tail_adaptive_beta = float(tail_adaptive_beta)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w, _, _ = self._log_weights(model, guide, args, kwargs)
        gamma = tail_weights(log_w.detach(), self.tail_adaptive_beta)
        elbo = log_w.mean(0).sum().detach()
        surrogate = (gamma * log_w).sum()
        return -(elbo + (surrogate - surrogate.detach()))


def tail_weights(log_w: torch.Tensor, beta: float = -1.0) -> torch.Tensor:
    """``gamma_k = F(w_k)^beta / sum_j F(w_j)^beta`` over dim 0, ``F(t) = (1/K) #{j: w_j >= t}``."""
    tail = (log_w.unsqueeze(1) >= log_w.unsqueeze(0)).to(log_w.dtype).mean(0)  # [j, k]: w_j >= w_k
    gamma = tail.pow(beta)
    return gamma / gamma.sum(0, keepdim=True)
