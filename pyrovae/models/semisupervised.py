"""M2, the semi-supervised VAE of Kingma, Rezende, Mohamed & Welling (NeurIPS 2014).

Model ``p(y) p(z) p(x | y, z)``: ``y ~ Cat(uniform)`` over ``classes`` labels, ``z ~ N(0, I)``, the
decoder of :class:`~pyrovae.models.conditional.CVAE`. Guide ``q(y | x) q(z | x, y)``: a classifier
and the CVAE's encoder. Batches hold ``(x, y)`` with ``y = -1`` where the label is unknown
(:func:`pyrovae.data.labels.hide_labels`). Both kinds of example use the one site ``"label"``:

* known label: the guide's ``q`` at ``"label"`` is the point mass on it, so the example's ELBO is the
  paper's labelled bound ``-L(x, y) = log p(x | y, z) + log p(y) + log p(z) - log q(z | x, y)``;
* unknown: ``q(y | x)`` from the classifier, giving ``-U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x))``.

Train with estimator ``enum``: it sums ``"label"`` out exactly (parallel enumeration; a known label
is one term with weight 1); ``trace`` samples it instead, with score-function gradients. A known
label is a point mass in the guide rather than an observed model site (Pyro's ``obs_mask`` splits a
site into an observed and a masked latent one, which ``enum`` sums out just as well): one site then
serves both kinds of example, with the same prior term ``log p(y)``.

While training (``model.train()``) the model also observes the known labels under the classifier,
the paper's ``alpha * E[log q(y | x)]`` over the labelled examples (eq. 9): ``alpha`` multiplies
the mean over the batch's labelled examples, default ``0.1 * N`` for a batch of ``N`` (the paper's
``0.1 N`` with the batch as the data set; ``0.1`` per example when every label is known).
Evaluation (``eval()``) leaves it out: held-out ELBOs are bounds on ``log p(x, y)`` where ``y`` is
known and on ``log p(x)`` where it is ``-1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyrovae import checks
from pyrovae.errors import PyrovaeError
from pyrovae.models.conditional import CVAE, Classifier, check_labels, one_hot, predict

__all__ = ["M2", "classification_accuracy"]


class M2(CVAE):
    """M2 over images ``(C, H, W)`` and labels ``0..classes-1`` (``-1``: unknown); arguments as
    :class:`~pyrovae.models.conditional.CVAE`, plus ``alpha`` (the classifier term's weight; ``None``:
    ``0.1 * batch size``)."""

    name = "m2"
    max_plate_nesting = 1
    unknown_labels = True

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None,
                 classes: int = 10, alpha: float | None = None):
        super().__init__(shape, z_dim, hidden, net, likelihood, obs_scale, classes)
        if alpha is not None:
            alpha = checks.finite(alpha, checks.label("alpha", "--model m2:alpha=A"), minimum=0)
        self.alpha = alpha
        self.classifier = Classifier(net, self.shape, list(hidden), self.classes)
        self.register_buffer("label_logits", torch.zeros(self.classes))  # p(y) uniform
        self._spec["alpha"] = alpha

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``y ~ Cat(uniform)``, ``z ~ N(0, I)``, ``x ~ p(x | y, z)``; ``y`` known or ``-1``."""
        self.check_batch(x, y)
        self.register_decoder()
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("label", dist.Categorical(logits=self.label_logits))
            z = pyro.sample("latent", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            self.observe(x, z, self.code(label))
            if self.training:
                self.classification_term(x, y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``y ~ q(y | x)`` where unknown (a point mass where known), ``z ~ q(z | x, y)``."""
        self.check_batch(x, y)
        pyro.module("encoder", self.encoder)
        pyro.module("classifier", self.classifier)
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("label", dist.Categorical(logits=self.label_posterior(x, y)),
                                infer={"enumerate": "parallel"})
            pyro.sample("latent", self.posterior(*self.encoder(x, self.code(label))))

    def label_posterior(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of the guide's label: the classifier's, or ``log onehot(y)``
        (0 at the label, ``-inf`` elsewhere) where ``y`` is known."""
        known = (y >= 0).unsqueeze(-1)
        point = one_hot(y, self.classes, self.prior_loc.dtype).log()
        return torch.where(known, point, self.classifier(x))

    def classification_term(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The observed site ``"classifier"``: ``alpha * mean log q(y | x)`` over the known labels."""
        alpha = 0.1 * x.shape[0] if self.alpha is None else self.alpha
        if alpha == 0:
            return  # poutine.scale refuses 0; the term is absent
        pyro.module("classifier", self.classifier)
        known = y >= 0
        weight = alpha / known.sum().clamp(min=1).to(self.prior_loc.dtype)  # a tensor: no host read
        with poutine.mask(mask=known), poutine.scale(scale=weight):
            pyro.sample("classifier", dist.Categorical(logits=self.classifier(x)), obs=y.clamp(min=0))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """``argmax_y q(y | x)`` for images ``(N, C, H, W)``: labels ``(N,)``."""
        return predict(self.classifier, x, batch_size)


def classification_accuracy(model: M2 | torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                            batch_size: int = 1000) -> float:
    """The fraction of the examples with a known label (``y >= 0``) that ``model`` classifies right:
    an :class:`M2` (its ``q(y | x)``) or any network of class logits."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(y, torch.Tensor) \
            or y.shape != x.shape[:1]:
        raise PyrovaeError("classification_accuracy needs images x (N, C, H, W) and labels y (N,), got "
                           f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    classifier = model.classifier if isinstance(model, M2) else model
    classes = model.classes if isinstance(model, M2) else None
    check_labels(y, classes if classes is not None else int(y.max()) + 1, "y", unknown=True)
    known = y >= 0
    if not bool(known.any()):
        raise PyrovaeError("every label in y is -1 (unknown): accuracy needs held-out examples with "
                           "their labels, such as dataset.test_y")
    pred = predict(classifier, x[known], batch_size)
    return float((pred == y[known]).float().mean())
