"""Models that read class labels: the building blocks, and the conditional VAE.

The conditional VAE (Sohn, Lee & Yan 2015) writes ``p(z) p(x | z, y)`` with ``z ~ N(0, I)`` and the
label ``y`` (an integer class, one-hot coded) given; its guide is ``q(z | x, y)``. Batches carry the
labels (``inputs = ("x", "y")``): the training loop passes ``(x, y)``, and
``pyrovae.sample(model, n, inputs=(x, y))`` draws images of the classes ``y``.

Labels enter the networks of :func:`pyrovae.nn.nets.build_networks` unchanged: the decoder's code is
``[z, onehot(y)]``; the encoder sees ``[flatten(x), onehot(y)]`` (``net="mlp"``) or ``onehot(y)`` as
``classes`` constant image channels beside ``x`` (every other net, convolutional ones included).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.util import is_validation_enabled
from torch import nn

from pyrovae import checks
from pyrovae.errors import PyrovaeError
from pyrovae.models.vae import VAE
from pyrovae.nn.nets import build_networks

__all__ = ["CVAE", "Classifier", "LabelledEncoder", "check_labels", "join", "one_hot",
           "predict"]


def one_hot(y: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(...,)`` integer labels -> ``(..., classes)`` one-hot rows; a label outside
    ``[0, classes)`` (``-1``, unknown) gives a row of zeros. No host read (capture-safe)."""
    return (y.unsqueeze(-1) == torch.arange(classes, device=y.device)).to(dtype)


def join(h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """``[h, code]`` along the last dim, leading dims broadcast (particles, enumerated labels)."""
    batch = torch.broadcast_shapes(h.shape[:-1], code.shape[:-1])
    return torch.cat([h.expand(*batch, h.shape[-1]), code.expand(*batch, code.shape[-1])], -1)


def check_labels(y: torch.Tensor, classes: int, what: str = "labels", unknown: bool = False) -> None:
    """Raise :class:`PyrovaeError` unless ``y`` holds integers in ``[0, classes)`` (or ``-1``,
    unknown, when ``unknown``). Reads ``y`` on the host."""
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex \
            or y.dtype == torch.bool:
        raise PyrovaeError(f"{what} must be a tensor of integer class labels, got "
                           f"{getattr(y, 'dtype', type(y).__name__)}")
    if not y.numel():
        return
    low, high = int(y.min()), int(y.max())
    if low < (-1 if unknown else 0) or high >= classes:
        allowed = f"-1 (unknown) or 0..{classes - 1}" if unknown else f"0..{classes - 1}"
        fix = f"build the model with classes={high + 1}" if high >= classes else "fix the labels"
        raise PyrovaeError(f"{what} must be {allowed}, got values in [{low}, {high}]: {fix}")


def _classes(classes: int, model: str) -> int:
    return checks.whole(classes, checks.label("classes", f"--model {model}:classes=K"), minimum=2)


class Classifier(nn.Module):
    """Class logits ``(..., classes)`` for images ``(..., C, H, W)``: the encoder that
    :func:`~pyrovae.nn.nets.build_networks` makes for ``net``, with ``classes`` outputs read from its
    location head."""

    def __init__(self, net: str, shape: Sequence[int], hidden: Sequence[int], classes: int):
        super().__init__()
        self.body, _ = build_networks(net, shape, list(hidden), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[0]


@torch.no_grad()
def predict(classifier: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The most probable class of each image under a network of class logits, in batches."""
    checks.whole(batch_size, "batch_size")
    training = classifier.training
    classifier.eval()
    try:
        return torch.cat([classifier(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
    finally:
        classifier.train(training)


class LabelledEncoder(nn.Module):
    """``q(z | x, y)``: images ``(..., C, H, W)`` and one-hot labels ``(..., classes)`` (leading dims
    broadcast) -> ``(loc, scale)``, each ``(..., z_dim)``."""

    def __init__(self, net: str, shape: Sequence[int], hidden: Sequence[int], z_dim: int, classes: int):
        super().__init__()
        c, h, w = shape
        self.flat = net in ("mlp", "gated")
        inner = (1, 1, c * h * w + classes) if self.flat else (c + classes, h, w)
        self.net, _ = build_networks(net, inner, list(hidden), z_dim)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flat:
            h = join(x.flatten(-3), code)
            return self.net(h.reshape(*h.shape[:-1], 1, 1, h.shape[-1]))
        height, width = x.shape[-2:]
        channels = code[..., None, None].expand(*code.shape, height, width)
        batch = torch.broadcast_shapes(x.shape[:-3], code.shape[:-1])
        h = torch.cat([x.expand(*batch, *x.shape[-3:]), channels.expand(*batch, *channels.shape[-3:])], -3)
        return self.net(h)


class CVAE(VAE):
    """A conditional VAE over images ``(C, H, W)`` and labels ``0..classes-1``: ``p(x | z, y)``,
    ``q(z | x, y)``, ``z ~ N(0, I)``. Arguments as :class:`~pyrovae.models.vae.VAE`, plus ``classes``."""

    name = "cvae"
    inputs = ("x", "y")
    unknown_labels = False  # whether -1 (an unknown label) is allowed

    def __init__(self, shape: Sequence[int], z_dim: int = 16, hidden: Sequence[int] = (400,),
                 net: str = "mlp", likelihood: str = "bernoulli", obs_scale: float | None = None,
                 classes: int = 10):
        super().__init__(shape, z_dim, hidden, net, likelihood, obs_scale)
        self.classes = _classes(classes, self.name)
        self.encoder = LabelledEncoder(net, self.shape, list(hidden), self.z_dim, self.classes)
        _, self.decoder = build_networks(net, self.shape, list(hidden), self.z_dim + self.classes)
        self._spec["classes"] = self.classes

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor, what: str = "the labels y") -> None:
        """Raise :class:`PyrovaeError` unless ``y`` holds labels this model takes (reads them)."""
        check_labels(y, self.classes, what, self.unknown_labels)

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """:meth:`check_inputs` inside ``model``/``guide``, where a host read is cheap."""
        # free on the CPU; on a GPU it would stall every step (and break CUDA-graph capture), so
        # there labels are checked where Pyro's validation is on
        if y.device.type == "cpu" or is_validation_enabled():
            self.check_inputs(x, y, "the batch's labels y")

    def code(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot labels ``(..., classes)`` in the networks' dtype."""
        return one_hot(y, self.classes, self.prior_loc.dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``z ~ N(0, I)``, ``x ~ p(x | decoder([z, onehot(y)]))``; ``x (N, C, H, W)``, ``y (N,)``."""
        self.check_batch(x, y)
        self.register_decoder()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            self.observe(x, z, self.code(y))

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``z ~ q(z | x, y)``."""
        self.check_batch(x, y)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", self.posterior(*self.encoder(x, self.code(y))))

    def register_decoder(self) -> None:
        """``pyro.module`` the decoder (and the likelihood's learned scale, if any)."""
        pyro.module("decoder", self.decoder)
        if self._likelihood_has_params:
            pyro.module("likelihood", self.likelihood)

    def observe(self, x: torch.Tensor, z: torch.Tensor, code: torch.Tensor) -> None:
        """The observation site ``"obs"``: ``x ~ p(x | z, y)`` for one-hot labels ``code``."""
        out = self.decoder(join(z, code))
        pyro.sample("obs", self.likelihood.distribution(out).to_event(3), obs=x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Mean images ``E[x | z, y]`` ``(..., C, H, W)`` for codes ``(..., z_dim)`` and labels ``(...)``."""
        check_labels(y, self.classes)
        return self.likelihood.mean(self.decoder(join(z, self.code(y))))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Decode the posterior mean of each image given its label: ``(N, C, H, W)``."""
        check_labels(y, self.classes)
        return self.decode(self.encoder(x, self.code(y))[0], y)
