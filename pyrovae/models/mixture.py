"""The Gaussian-mixture VAE: a categorical cluster ``c`` above the code ``z``.

Model ``p(c) p(z | c) p(x | z)``: ``c ~ Cat(pi)`` over ``clusters`` components (``pi`` learned, or
uniform), ``z | c ~ N(mu_c, diag(sigma_c^2))`` with learned ``mu_c, sigma_c``, and the VAE's
decoder. Guide ``q(c | x) q(z | x)``: a classifier head and the VAE's encoder (Dilokthanakul et al.
2016 use ``q(z | x)`` too; Jiang et al. 2017, VaDE, derive ``q(c | x)`` from it instead).

Train with estimator ``enum``: the guide's cluster site is enumerated in parallel, so for one draw
``z ~ q(z | x)`` the ELBO is exact in ``c``::

    log p(x | z) - log q(z | x) + sum_c q(c | x) [log p(c) + log p(z | c) - log q(c | x)]

(``trace`` samples ``c`` instead, with score-function gradients, and Pyro warns about it).
:func:`cluster_purity` scores the clusters ``argmax_c q(c | x)`` against labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae import checks
from pyrovae.errors import PyrovaeError
from pyrovae.models.conditional import Classifier, check_labels, predict
from pyrovae.models.vae import VAE

__all__ = ["GMVAE", "MixturePrior", "cluster_purity", "purity"]

WEIGHTS = ("learned", "uniform")
_MIN_SCALE = 1e-3


class MixturePrior(nn.Module):
    """``clusters`` diagonal Gaussians over ``z_dim`` dims and their weights (logits)."""

    def __init__(self, clusters: int, z_dim: int, learn_weights: bool = True):
        super().__init__()
        self.loc = nn.Parameter(torch.randn(clusters, z_dim))
        # softplus(raw) + min = 1 at the start: components as wide as a standard normal
        self.raw_scale = nn.Parameter(torch.full((clusters, z_dim), math.log(math.expm1(1 - _MIN_SCALE))))
        logits = torch.zeros(clusters)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def weights(self) -> dist.Categorical:
        """``p(c)``, batch shape ``()``."""
        return dist.Categorical(logits=self.logits)

    def component(self, c: torch.Tensor) -> dist.TorchDistribution:
        """``p(z | c)`` for cluster indices ``c (...)``: batch shape ``(...)``, event ``(z_dim,)``."""
        return dist.Normal(self.loc[c], F.softplus(self.raw_scale[c]) + _MIN_SCALE).to_event(1)


class GMVAE(VAE):
    """A VAE with a mixture-of-Gaussians prior; arguments as :class:`~pyrovae.models.vae.VAE`, plus
    ``clusters`` (K, default 10) and ``weights``, the mixture weights: ``"uniform"`` (the default)
    or ``"learned"``. Learned weights tend to collapse: on the 8x8 digits, 15 epochs left two
    clusters in use (held-out purity 0.17), against 0.38 for uniform ones."""

    name = "gmvae"
    max_plate_nesting = 1

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None,
                 clusters: int = 10, weights: str = "uniform"):
        super().__init__(shape, z_dim, hidden, net, likelihood, obs_scale)
        self.clusters = checks.whole(clusters, checks.label("clusters", "--model gmvae:clusters=K"))
        if weights not in WEIGHTS:
            raise PyrovaeError(f"{checks.label('weights', '--model gmvae:weights=W')} must be one of "
                               f"{', '.join(WEIGHTS)}, got {weights!r}")
        self.prior = MixturePrior(self.clusters, self.z_dim, learn_weights=weights == "learned")
        self.classifier = Classifier(net, self.shape, list(hidden), self.clusters)
        self._spec.update(clusters=self.clusters, weights=weights)

    def model(self, x: torch.Tensor) -> None:
        """``c ~ Cat(pi)``, ``z ~ N(mu_c, sigma_c)``, ``x ~ p(x | decoder(z))``."""
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("cluster", self.prior.weights())
            z = pyro.sample("latent", self.prior.component(c))
            pyro.sample("obs", self.likelihood.distribution(self.decoder(z)).to_event(3), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """``c ~ q(c | x)`` (enumerated), ``z ~ q(z | x)``."""
        pyro.module("classifier", self.classifier)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("cluster", dist.Categorical(logits=self.classifier(x)),
                        infer={"enumerate": "parallel"})
            pyro.sample("latent", self.posterior(*self.encoder(self.encoder_input(x))))

    @torch.no_grad()
    def assign(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The cluster ``argmax_c q(c | x)`` of each image ``(N, C, H, W)``: ``(N,)``."""
        return predict(self.classifier, x, batch_size)


def purity(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    """``(1/N) sum_c max_k #{i: cluster_i = c, label_i = k}``: 1 when every cluster holds one class."""
    if clusters.shape != labels.shape or clusters.dim() != 1 or not len(labels):
        raise PyrovaeError(f"purity needs as many cluster indices as labels, one per example, got shapes "
                           f"{tuple(clusters.shape)} and {tuple(labels.shape)}")
    k = int(labels.max()) + 1
    counts = torch.bincount(clusters.long() * k + labels.long(), minlength=(int(clusters.max()) + 1) * k)
    return float(counts.reshape(-1, k).max(1).values.sum()) / len(labels)


def cluster_purity(model: GMVAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """The :func:`purity` of ``model``'s clusters ``argmax_c q(c | x)`` against labels ``y (N,)``
    (held-out data: ``dataset.test_x``, ``dataset.test_y``)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(y, torch.Tensor) \
            or y.shape != x.shape[:1] or not len(y):
        raise PyrovaeError("cluster_purity needs images x (N, C, H, W) and labels y (N,), N >= 1, got "
                           f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    check_labels(y, int(y.max()) + 1 if y.numel() else 1, "y")
    return purity(model.assign(x, batch_size).cpu(), y.cpu())
