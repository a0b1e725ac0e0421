"""ELBO estimators that Pyro does not ship, written as Pyro ``ELBO`` classes.

* :class:`STL_ELBO` -- "sticking the landing" (Roeder, Wu & Duvenaud 2017): the reparameterized
  ELBO gradient with the score term of ``q`` removed.
* :class:`DReG_ELBO` -- the importance-weighted bound (Burda et al. 2016) with doubly
  reparameterized guide gradients (Tucker, Lawson, Gu & Maddison 2019).
* :class:`ScoreFunction_ELBO` -- ``Trace_ELBO`` with the reparameterization trick switched off, so
  Pyro falls back to the score-function (REINFORCE) gradient.
* :class:`IWAE_ELBO` / :class:`TailAdaptive_ELBO` -- Pyro's ``RenyiELBO`` and
  ``TraceTailAdaptive_ELBO`` with a clear error for non-reparameterized guide sites (and, for the
  tail-adaptive one, a usable loss value).
* :class:`Jit_ELBO` / :class:`MeanField_ELBO` -- Pyro's classes of the same purpose, fixed or
  checked.

All classes implement ``loss``, ``loss_and_grads`` and, except the Renyi/IWAE one,
``differentiable_loss``; particles and their vectorization are owned by Pyro's ``ELBO`` base
class.

``poutine.scale`` on a site (e.g. the beta of a beta-VAE, applied to the latent site in model and
guide) multiplies that site's log-densities, so for the importance-weighted bounds the log weight
becomes ``log p(x|z) + beta * (log p(z) - log q(z|x))`` and the bound is the log mean of those
scaled weights; every gradient below is unbiased for that scaled bound.
"""

from __future__ import annotations

import math

import pyro.infer
import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.util import check_if_enumerated, warn_if_nan

from .errors import PyrovaeError

__all__ = [
    "DReG_ELBO",
    "IWAE_ELBO",
    "Jit_ELBO",
    "MeanField_ELBO",
    "NonReparameterized",
    "STL_ELBO",
    "ScoreFunction_ELBO",
    "TailAdaptive_ELBO",
    "no_rsample",
    "require_reparameterized",
]


# --------------------------------------------------------------------------- shared helpers


def _latent_sites(trace: Trace) -> list[dict]:
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def require_reparameterized(guide_trace: Trace, estimator: str) -> None:
    """Raise :class:`PyrovaeError` unless every latent site of ``guide_trace`` has ``rsample``."""
    for site in _latent_sites(guide_trace):
        if not site["fn"].has_rsample:
            raise PyrovaeError(
                f"estimator {estimator!r} needs reparameterized latent sites, but guide site "
                f"{site['name']!r} draws from {type(site['fn']).__name__}, which has no rsample "
                "(a discrete or otherwise non-reparameterizable distribution); use 'trace' or "
                "'graph', which fall back to score-function gradients"
            )


def _importance_trace(elbo: ELBO, model, guide, args, kwargs, estimator: str):
    model_trace, guide_trace = get_importance_trace(
        "flat", elbo.max_plate_nesting, model, guide, args, kwargs
    )
    if is_validation_enabled():
        check_if_enumerated(guide_trace)
    require_reparameterized(guide_trace, estimator)
    return model_trace, guide_trace


def _score_terms(guide_trace: Trace, estimator: str) -> list[tuple[dict, torch.Tensor]]:
    """Per latent guide site, the scaled ``log q(stop_grad(z))`` (same shape as ``log_prob``).

    Its gradient is the score ``d/dphi log q_phi(z)`` at fixed ``z``: adding it to a surrogate
    that contains ``-log q_phi(z_phi)`` leaves only the path derivative through ``z``. This needs
    each site's distribution to depend on parameters and data but not on other latent values
    (true of the amortized VAE guide); otherwise detaching ``z`` would also cut genuine path
    terms, so that case is rejected.
    """
    sites = [s for s in _latent_sites(guide_trace) if s["value"].requires_grad]
    terms = []
    for site in sites:
        log_q = site["fn"].log_prob(site["value"].detach())
        terms.append((site, scale_and_mask(log_q, site["scale"], site["mask"])))
    if len(sites) > 1:
        for site, term in terms:
            others = [s["value"] for s in sites if s is not site]
            if term.requires_grad and any(
                g is not None
                for g in torch.autograd.grad(
                    term.sum(), others, retain_graph=True, allow_unused=True
                )
            ):
                raise PyrovaeError(
                    f"estimator {estimator!r} needs a guide whose latent sites do not depend on "
                    f"each other, but the distribution of guide site {site['name']!r} depends on "
                    "another latent value; use 'trace' or 'iwae' for hierarchical guides"
                )
    return terms


def path_scale(site: dict):
    """The weight ``c`` of ``log q`` in the log weight: the site's scale, 0 where it is masked
    (an auto-encoder's latent, or ``beta = 0``), where the log weight has no ``log q`` term."""
    mask = site["mask"]
    if mask is None or mask is True:
        return site["scale"]
    if mask is False:
        return 0.0
    return scale_and_mask(torch.ones_like(mask, dtype=site["value"].dtype), site["scale"], mask)


def _sum_keepdim(tensor: torch.Tensor, dims: list[int]) -> torch.Tensor:
    dims = [d for d in dims if -tensor.dim() <= d]
    return tensor.sum(dims, keepdim=True) if dims else tensor


def _log_weight(model_trace: Trace, guide_trace: Trace):
    """``log p(x, z) - log q(z)`` summed over dependent plates, keeping their dims as size 1."""
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    log_w = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            log_w = log_w + _sum_keepdim(site["log_prob"], sum_dims)
    for site in _latent_sites(guide_trace):
        log_w = log_w - _sum_keepdim(site["log_prob"], sum_dims)
    return log_w


def _align(weight: torch.Tensor, site: dict) -> torch.Tensor:
    """Drop leading size-1 dims of per-particle weights so they right-align with the site's
    batch dims (plates are right-aligned, dependent plates kept as size-1 dims)."""
    batch_dim = len(site["fn"].batch_shape)
    while weight.dim() > batch_dim and weight.shape[0] == 1:
        weight = weight.squeeze(0)
    return weight


# --------------------------------------------------------------------------- sticking the landing


class STL_ELBO(pyro.infer.Trace_ELBO):
    r"""The ELBO with the "sticking the landing" gradient (Roeder, Wu & Duvenaud, NeurIPS 2017).

    The reparameterized gradient of ``log p(x, z) - log q_phi(z)`` with ``z = T(eps, phi)`` is
    ``(d/dz)[log p - log q] dz/dphi - d/dphi log q_phi(z)``; the last term (the score of ``q``)
    has mean zero, so dropping it keeps the estimator unbiased and makes its variance vanish when
    ``q`` equals the posterior. The loss value and the model-parameter gradient are those of
    :class:`pyro.infer.Trace_ELBO`.

    Needs reparameterized guide sites whose distributions do not depend on other latent values.
    """

    def _get_trace(self, model, guide, args, kwargs):
        return _importance_trace(self, model, guide, args, kwargs, "stl")

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate_loss = super()._differentiable_loss_particle(model_trace, guide_trace)
        for _, score in _score_terms(guide_trace, "stl"):
            surrogate_loss = surrogate_loss - score.sum()
        return loss, surrogate_loss


# --------------------------------------------------------------------------- DReG


class DReG_ELBO(ELBO):
    r"""The IWAE bound with doubly reparameterized guide gradients (Tucker et al., ICLR 2019).

    Bound, per independent data point: ``log (1/K) sum_k w_k`` with ``w_k = p(x, z_k) / q(z_k)``,
    ``z_k ~ q`` (Burda, Grosse & Salakhutdinov 2016). With normalized weights
    ``wn_k = w_k / sum_j w_j``:

    * model parameters ``theta``: ``sum_k wn_k d/dtheta log w_k`` (the ordinary IWAE gradient);
    * guide parameters ``phi``: ``sum_k wn_k^2 (d log w_k / dz_k) dz_k/dphi`` (eq. 5 of the
      paper): the score term of ``q`` is replaced by its reparameterized equivalent.

    If a latent site carries a scale ``c`` (``poutine.scale``, e.g. beta) the score term enters
    the log weight multiplied by ``c`` and the same derivation gives the path weight
    ``(1 - c) wn_k + c wn_k^2``; with ``c = 1`` this is eq. 5. With ``K = 1`` this estimator is
    :class:`STL_ELBO`. The loss is ``-sum_n log (1/K) sum_k w_{k,n}``.

    Needs reparameterized guide sites whose distributions do not depend on other latent values.

    :param num_particles: K, the number of importance samples per data point.
    :param max_plate_nesting: as for :class:`pyro.infer.ELBO`.
    :param vectorize_particles: draw the K samples in one vectorized pass.
    """

    def __init__(
        self,
        num_particles: int = 2,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
    ):
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )

    def _get_trace(self, model, guide, args, kwargs):
        return _importance_trace(self, model, guide, args, kwargs, "dreg")

    def _bound_and_surrogate(self, model, guide, args, kwargs, surrogate: bool):
        traces = list(self._get_traces(model, guide, args, kwargs))
        log_ws = [_log_weight(m, g) for m, g in traces]
        if not isinstance(log_ws[0], torch.Tensor):  # no sample sites at all
            return torch.tensor(0.0), None
        vectorized = self.vectorize_particles and self.num_particles > 1
        log_w = log_ws[0] if vectorized else torch.stack(log_ws)  # particles at dim 0
        log_norm = torch.logsumexp(log_w, dim=0, keepdim=True)
        bound = (log_norm - math.log(self.num_particles)).sum()
        if not surrogate or not log_w.requires_grad:
            return bound.detach(), None

        wn = (log_w - log_norm).exp().detach()  # normalized weights, same shape as log_w
        # The IWAE surrogate: right theta-gradient; its phi-gradient is fixed below.
        surr = (wn * log_w).sum()
        # (a) cancel the direct phi-dependence of -c log q_phi(z) (the score term);
        # (b) reweight the path term (d log w / dz) dz/dphi from wn to (1 - c) wn + c wn^2 by
        #     adding a term linear in z whose coefficient is the (detached) gradient.
        scored = [
            (i, site, score)
            for i, (_, guide_trace) in enumerate(traces)
            for site, score in _score_terms(guide_trace, "dreg")
        ]
        if scored:
            values = [site["value"] for _, site, _ in scored]
            grads = torch.autograd.grad(log_w.sum(), values, retain_graph=True)
            for (i, site, score), grad in zip(scored, grads, strict=True):
                w = _align(wn if vectorized else wn[i], site)  # site's batch shape
                surr = surr + (w * score).sum()  # (a)
                event = (1,) * len(site["fn"].event_shape)
                w = w.reshape(w.shape + event)
                scale = path_scale(site)
                if torch.is_tensor(scale):
                    scale = scale.reshape(scale.shape + event)
                surr = surr + (scale * (w**2 - w) * grad * site["value"]).sum()  # (b)
        return bound.detach(), surr

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the IWAE bound estimated with ``num_particles`` samples (nats)."""
        bound, _ = self._bound_and_surrogate(model, guide, args, kwargs, surrogate=False)
        loss = -bound.item()
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the bound, as a tensor whose gradient is the DReG estimator."""
        bound, surr = self._bound_and_surrogate(model, guide, args, kwargs, surrogate=True)
        if surr is None:
            return -bound
        return -(bound + (surr - surr.detach()))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Accumulate the DReG gradient into the parameters; return minus the bound."""
        bound, surr = self._bound_and_surrogate(model, guide, args, kwargs, surrogate=True)
        if surr is not None:
            (-surr).backward(retain_graph=self.retain_graph)
        loss = -bound.item()
        warn_if_nan(loss, "loss")
        return loss


# --------------------------------------------------------------------------- score function


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


class ScoreFunction_ELBO(pyro.infer.Trace_ELBO):
    """``Trace_ELBO`` with the reparameterization trick switched off for the guide's latents.

    The guide runs under :class:`no_rsample`, so ``z`` is sampled without a path to ``phi`` and
    the guide gradient is the score-function estimator ``E[(log p - log q) d/dphi log q]``
    (Williams 1992; Ranganath et al. 2014), with Pyro's plate-wise Rao-Blackwellization. The
    loss value is the ordinary ELBO estimate; compare with ``trace`` to see what ``z = mu +
    sigma * eps`` buys.

    :param sites: latent site names to treat this way (``None``: all of them).
    """

    def __init__(self, *, sites=None, **kwargs):
        super().__init__(**kwargs)
        self.sites = sites

    def _get_trace(self, model, guide, args, kwargs):
        return super()._get_trace(model, no_rsample(self.sites)(guide), args, kwargs)


# --------------------------------------------------------------------------- Pyro's, checked


class IWAE_ELBO(pyro.infer.RenyiELBO):
    """Pyro's :class:`~pyro.infer.RenyiELBO` (Li & Turner 2016; IWAE at ``alpha = 0``, Burda et
    al. 2016) that rejects non-reparameterized guide sites with a clear error, since Pyro's
    surrogate omits their score terms. Has ``loss`` and ``loss_and_grads`` only."""

    def _get_trace(self, model, guide, args, kwargs):
        name = "iwae" if self.alpha == 0 else "renyi"
        return _importance_trace(self, model, guide, args, kwargs, name)


class Jit_ELBO(pyro.infer.JitTrace_ELBO):
    """Pyro's :class:`~pyro.infer.JitTrace_ELBO`, compiled once per model/guide pair and per
    distinct keyword values.

    Pyro keys its compilation cache on ``id(model)``; a bound method such as ``vae.model`` is a
    new object on every attribute access, so each step would recompile (and keep the old
    graph). Here the first bound method seen for each (function, instance) is reused. Keyword
    values are compiled in as constants, and Pyro keys tensors by identity, so 0-dim tensor
    keywords (beta) are passed on as floats; every new value (e.g. each beta of a schedule)
    compiles a new graph: use ``jit`` with a constant beta.
    """

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        kwargs = {
            k: v.item() if torch.is_tensor(v) and v.dim() == 0 else v for k, v in kwargs.items()
        }
        return super().loss_and_surrogate_loss(
            self._stable(model), self._stable(guide), *args, **kwargs
        )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        # Pyro's version adds the surrogate's gradient to the (non-detached) loss's, doubling
        # the gradient of reparameterized sites (pyro-ppl 1.9.2).
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        loss = loss.detach()
        warn_if_nan(loss, "loss")
        return loss + (surrogate_loss - surrogate_loss.detach())

    def _stable(self, fn):
        key = (getattr(fn, "__func__", fn), id(getattr(fn, "__self__", None)))
        return self.__dict__.setdefault("_callables", {}).setdefault(key, fn)


class MeanField_ELBO(pyro.infer.TraceMeanField_ELBO):
    """Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL between guide and prior
    sites where ``kl_divergence`` is registered, Monte Carlo elsewhere) with a
    :class:`PyrovaeError` for the non-reparameterized guide sites it does not support."""

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        require_reparameterized(guide_trace, "meanfield")
        return model_trace, guide_trace


class TailAdaptive_ELBO(pyro.infer.TraceTailAdaptive_ELBO):
    """Pyro's tail-adaptive f-divergence gradient (Wang, Liu & Liu, NeurIPS 2018).

    That objective has no tractable value, so ``loss`` and the value returned by
    ``loss_and_grads`` are the standard ELBO estimate from the same particles (for monitoring);
    the gradient is Pyro's tail-adaptive surrogate. Particles are ranked by their log weight
    summed over the whole batch. Needs reparameterized guide sites and vectorized particles.
    """

    def _get_trace(self, model, guide, args, kwargs):
        return _importance_trace(self, model, guide, args, kwargs, "tail-adaptive")

    def loss(self, model, guide, *args, **kwargs) -> float:
        return pyro.infer.Trace_ELBO.loss(self, model, guide, *args, **kwargs)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        _, surrogate_loss = super()._differentiable_loss_particle(model_trace, guide_trace)
        elbo = model_trace.log_prob_sum().item() - guide_trace.log_prob_sum().item()
        return -elbo, surrogate_loss
