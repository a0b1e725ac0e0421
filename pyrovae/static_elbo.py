"""Capture-ready ELBO losses: the registry's estimators as one tensor, with no host synchronisation.

A training step recorded in a CUDA graph must not wait for the device: no ``.item()``, no
``bool(tensor)`` or ``float(tensor)``, no NaN check that reads a value, no copy to the host and no
new device tensor made from a Python number. Pyro's ``ELBO`` classes read every loss on the host
(``torch_item``, ``warn_if_nan``), so they cannot be captured. :class:`StaticELBO` recomputes the
same objectives directly from ``poutine.trace`` log-densities and returns a 0-dim device tensor
whose value is the registry estimator's loss and whose gradient (``loss.backward()``) is that
estimator's gradient, for the same random draws: the guide is traced, the model replayed against
it, and ``K > 1`` particles are vectorized by a ``pyro.plate`` left of the model's plates, exactly as
Pyro's ``vectorize_particles`` does.

Host-side work (parsing the spec, choosing the formula) happens once, when a :class:`StaticELBO`
is built; a call only runs the model, the guide and tensor arithmetic. Guides must be fully
reparameterized (the VAE's ``Normal`` or ``Delta`` guide), as every supported estimator needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import get_dependent_plate_dims
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import kl_divergence

from .errors import PyrovaeError
from .estimators import _align, _sum_keepdim, path_scale, require_reparameterized
from .objectives import make_elbo
from .vae import VAE

__all__ = ["CAPTURABLE", "StaticELBO", "capture_problem", "static_loss"]

CAPTURABLE: tuple[str, ...] = ("trace", "meanfield", "stl", "iwae", "renyi", "dreg")

_PROBLEMS = {
    "score": "estimator 'score' uses score-function gradients, which need host-side control flow",
    "graph": "estimator 'graph' (TraceGraph_ELBO) builds its Rao-Blackwellized score terms with "
    "host-side graph bookkeeping",
    "jit": "estimator 'jit' compiles with the TorchScript JIT; use 'trace', the same objective",
    "tail-adaptive": "estimator 'tail-adaptive' has no tractable loss value (it reports the ELBO, "
    "read on the host) and its surrogate is not reimplemented here",
}


def _parse(spec: str, num_particles: int, max_plate_nesting: int) -> tuple[str, pyro.infer.ELBO]:
    """Validate ``spec`` through the registry; return its name and the ELBO it builds."""
    elbo = make_elbo(spec, num_particles, max_plate_nesting)  # raises PyrovaeError for bad specs
    return spec.strip().partition(":")[0].strip(), elbo


def capture_problem(spec: str, num_particles: int = 1) -> str | None:
    """``None`` if the registry estimator ``spec`` (e.g. ``"iwae:5"``) has a capture-ready loss
    here, else one short reason why not.

    :raises PyrovaeError: for specs :func:`pyrovae.objectives.make_elbo` rejects.
    """
    name, _ = _parse(spec, num_particles, 1)
    if name in CAPTURABLE:
        return None
    return _PROBLEMS.get(name, f"estimator {name!r} has no capture-ready loss")


def _sample_sites(trace: Trace, latent_only: bool = False) -> list[dict]:
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not (latent_only and site["is_observed"])
    ]


def _log_prob(site: dict, value: torch.Tensor | None = None) -> torch.Tensor:
    """The site's scaled and masked ``log_prob`` (at ``value``, default the site's value)."""
    value = site["value"] if value is None else value
    return scale_and_mask(site["fn"].log_prob(value), site["scale"], site["mask"])


def _score(site: dict) -> torch.Tensor:
    """Scaled ``log q(stop_grad(z))``: its gradient is the score term of ``q`` at fixed ``z``."""
    return _log_prob(site, site["value"].detach())


class StaticELBO:
    """The loss of registry estimator ``spec`` as a capture-ready tensor.

    ``StaticELBO(spec, num_particles)(model, guide, *args, **kwargs)`` returns a 0-dim tensor:
    minus the estimator's objective summed over the data plate (nats), whose gradient is that
    estimator's gradient. The spec is parsed once, here; calls do no host synchronisation.

    :param spec: a registry spec whose name is in :data:`CAPTURABLE` (e.g. ``"dreg:8"``).
    :param num_particles: particles for specs without ``K``, as for :func:`make_elbo`.
    :param max_plate_nesting: plates in model and guide (the VAE's data plate: 1); the particle
        plate sits left of them.
    :raises PyrovaeError: for bad specs and estimators without a capture-ready loss.
    """

    def __init__(self, spec: str = "trace", num_particles: int = 1, max_plate_nesting: int = 1):
        name, elbo = _parse(spec, num_particles, max_plate_nesting)
        if name not in CAPTURABLE:
            raise PyrovaeError(f"no capture-ready loss for {spec!r}: {capture_problem(spec, num_particles)}")
        self.spec, self.name = spec, name
        self.num_particles = int(elbo.num_particles)
        self.alpha = float(getattr(elbo, "alpha", 0.0))  # iwae/renyi only
        self.max_plate_nesting = int(max_plate_nesting)
        self._particle_dim = -self.max_plate_nesting - 1

    def __repr__(self) -> str:
        return f"StaticELBO({self.spec!r}, num_particles={self.num_particles})"

    def __call__(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        """Minus the objective for one draw of the guide, as a 0-dim tensor (see the class)."""
        with pyro.validation_enabled(False):
            model_trace, guide_trace = self._traces(model, guide, args, kwargs)
            if self.name in ("trace", "meanfield", "stl"):
                loss = self._elbo_loss(model_trace, guide_trace)
            elif self.name == "dreg":
                loss = self._dreg_loss(model_trace, guide_trace)
            else:
                loss = self._renyi_loss(model_trace, guide_trace)
        if not isinstance(loss, torch.Tensor):
            raise PyrovaeError("the model has no sample sites: there is no loss to compute")
        return loss

    # ---- traces ----------------------------------------------------------------------------------

    def _traces(self, model, guide, args, kwargs) -> tuple[Trace, Trace]:
        if self.num_particles > 1:
            plate = pyro.plate("num_particles_vectorized", self.num_particles, dim=self._particle_dim)
            model, guide = plate(model), plate(guide)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
        require_reparameterized(guide_trace, self.name)
        return model_trace, guide_trace

    # ---- the ELBO: trace, meanfield, stl -------------------------------------------------------

    def _elbo_loss(self, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
        """``-(log p(x, z) - log q(z)) / K`` summed over particles and data (Trace_ELBO); the
        latent term is ``-KL(q || p)`` for meanfield; stl's gradient drops the score of q."""
        elbo: Any = 0.0
        if self.name == "meanfield":
            guide_sites = {site["name"]: site for site in _sample_sites(guide_trace, latent_only=True)}
            for site in _sample_sites(model_trace):
                if site["is_observed"]:
                    elbo = elbo + _log_prob(site).sum()
                    continue
                q = guide_sites.pop(site["name"])
                try:
                    kl = scale_and_mask(kl_divergence(q["fn"], site["fn"]), q["scale"], q["mask"])
                    elbo = elbo - kl.sum()
                except NotImplementedError:  # no closed form: Monte Carlo, as TraceMeanField_ELBO
                    elbo = elbo + _log_prob(site).sum() - _log_prob(q).sum()
            for q in guide_sites.values():  # auxiliary guide sites
                elbo = elbo - _log_prob(q).sum()
        else:
            for site in _sample_sites(model_trace):
                elbo = elbo + _log_prob(site).sum()
            for site in _sample_sites(guide_trace, latent_only=True):
                elbo = elbo - _log_prob(site).sum()
        loss = -elbo / self.num_particles
        if self.name != "stl" or not isinstance(loss, torch.Tensor):
            return loss
        scores = [_score(s).sum() for s in _sample_sites(guide_trace, True) if s["value"].requires_grad]
        if not scores:
            return loss
        surrogate = loss - sum(scores) / self.num_particles
        return loss.detach() + (surrogate - surrogate.detach())

    # ---- importance-weighted bounds: iwae, renyi, dreg ------------------------------------------

    def _log_weight(self, model_trace: Trace, guide_trace: Trace) -> Any:
        """``log p(x, z_k) - log q(z_k)`` per particle (dim ``-max_plate_nesting - 1``) and
        independent plate cell, dependent plates summed (kept as size-1 dims)."""
        model_sites = _sample_sites(model_trace)
        sum_dims = get_dependent_plate_dims(model_sites)
        log_w: Any = 0.0
        for site in model_sites:
            log_w = log_w + _sum_keepdim(_log_prob(site), sum_dims)
        for site in _sample_sites(guide_trace, latent_only=True):
            log_w = log_w - _sum_keepdim(_log_prob(site), sum_dims)
        if isinstance(log_w, torch.Tensor) and log_w.dim() < -self._particle_dim:
            log_w = log_w.reshape((1,) * (-self._particle_dim - log_w.dim()) + log_w.shape)
        return log_w

    def _renyi_loss(self, model_trace: Trace, guide_trace: Trace) -> Any:
        """``-sum 1/(1-alpha) (logsumexp_k((1-alpha) log w_k) - log K)`` (RenyiELBO; IWAE at 0).

        Its autograd gradient, ``-sum_k softmax_k((1-alpha) log w) d log w_k``, is RenyiELBO's
        surrogate gradient for reparameterized guides.
        """
        log_w = self._log_weight(model_trace, guide_trace)
        if not isinstance(log_w, torch.Tensor):
            return log_w
        a = 1.0 - self.alpha
        log_mean = torch.logsumexp(a * log_w, dim=self._particle_dim) - math.log(self.num_particles)
        return -log_mean.sum() / a

    def _dreg_loss(self, model_trace: Trace, guide_trace: Trace) -> Any:
        """Minus the IWAE bound, with DReG_ELBO's doubly reparameterized surrogate gradient.

        A latent site's path weight is ``(1 - c) wn + c wn^2`` with ``c`` the weight of its
        ``log q`` in ``log w``: its scale, and 0 where it is masked (auto-encoders, a Python beta
        of 0), so masked sites keep the IWAE gradient, as in ``DReG_ELBO``.
        """
        log_w = self._log_weight(model_trace, guide_trace)
        if not isinstance(log_w, torch.Tensor):
            return log_w
        log_norm = torch.logsumexp(log_w, dim=self._particle_dim, keepdim=True)
        bound = (log_norm - math.log(self.num_particles)).sum().detach()
        if not log_w.requires_grad:
            return -bound
        wn = (log_w - log_norm).exp().detach()  # normalized weights
        surrogate = (wn * log_w).sum()  # the IWAE surrogate; its guide gradient is fixed below
        sites = [s for s in _sample_sites(guide_trace, latent_only=True) if s["value"].requires_grad]
        if sites:
            grads = torch.autograd.grad(log_w.sum(), [s["value"] for s in sites], retain_graph=True)
            for site, grad in zip(sites, grads, strict=True):
                w = _align(wn, site)
                surrogate = surrogate + (w * _score(site)).sum()  # cancel the score term of q
                event = (1,) * len(site["fn"].event_shape)
                w = w.reshape(w.shape + event)
                c = path_scale(site)
                if isinstance(c, torch.Tensor):
                    c = c.reshape(c.shape + event)
                elif c == 0:  # masked (or a Python scale 0): the path weight stays wn
                    continue
                # path weight wn -> (1 - c) wn + c wn^2, by a term linear in z
                surrogate = surrogate + (c * (w**2 - w) * grad * site["value"]).sum()
        return -(bound + (surrogate - surrogate.detach()))


def static_loss(vae: VAE, x: torch.Tensor, beta: torch.Tensor, spec: str = "trace",
                num_particles: int = 1) -> torch.Tensor:
    """0-dim tensor on ``x``'s device: minus the objective of estimator ``spec`` summed over the
    batch (nats), whose gradient is that estimator's gradient; no host synchronisation.

    Parses ``spec`` on every call: for a captured step build a :class:`StaticELBO` once instead.
    """
    return StaticELBO(spec, num_particles)(vae.model, vae.guide, x, beta)
