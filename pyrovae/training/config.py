"""Training configuration: plain values, defaults chosen per data set, unknown keys rejected."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pyrovae import checks, memory
from pyrovae.errors import PyrovaeError
from pyrovae.infer.beta import MAX_BETA
from pyrovae.training.lr_schedules import parse_lr_schedule


@dataclass
class TrainConfig:
    """Everything needed to rebuild a run. ``None`` means "the data set's default"."""

    dataset: str = "mnist-5k"  # data set name (see pyrovae.data)
    data_dir: str | None = None  # folder holding IDX files, searched first
    binarize: str | None = None  # none | static | dynamic
    likelihood: str | None = None  # bernoulli | continuous-bernoulli | gaussian | laplace
    obs_scale: float | None = None  # fixed scale for gaussian/laplace; None learns it
    model: str = "vae"  # built-in: vae | ae (auto-encoder) | dae (denoising); user:module.Class
    noise: str | None = None  # dae input corruption: gaussian:STD | mask:PROB
    net: str | None = None  # mlp | conv
    hidden: list[int] | None = None  # dense hidden sizes, encoder order
    z_dim: int | None = None  # latent dimensions
    estimator: str = "trace"  # objective name (see pyrovae.objectives)
    particles: int = 1  # samples per example per step (vectorized)
    beta: float = 1.0  # KL weight target
    kl_schedule: str = "constant"  # constant | linear[:...] | cyclical[:...] | sigmoid[:...]
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # Adam learning rate
    lr_schedule: str = "constant"  # constant | step:every=E,gamma=G | exponential:gamma=G | cosine
    clip_norm: float | None = None  # clip the gradients' global norm to this (None: no clipping)
    val_fraction: float | None = None  # hold out this fraction of the training split for validation
    patience: int | None = None  # early stopping: epochs without a better held-out ELBO
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda when available)
    compile: str = "eager"  # eager | graph (the step as a CUDA graph) | auto (graph where possible)
    eval_batch_size: int = 1000  # held-out ELBO batches (memory only, not results)
    eval_held_out: bool = True  # held-out ELBO and active units after every epoch
    limit: int | None = None  # use only `limit` random training and held-out examples (smoke runs)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PyrovaeError(f"unknown config keys {unknown}: known keys are {sorted(known)}")
        return cls(**data)


# fields that configure the built-in models only (a user's model is built by its author)
MAX_CLIP_NORM = 1e6  # a gradient-norm bound beyond this clips nothing: a typo

BUILTIN_OPTIONS = ("net", "hidden", "z_dim", "likelihood", "obs_scale", "noise")

# Defaults per data set, so `pyrovae train --dataset NAME` just works.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist-5k": dict(net="mlp", hidden=[400], z_dim=16, epochs=40, batch_size=100),
    "digits": dict(net="mlp", hidden=[128], z_dim=8, epochs=30, batch_size=32, lr=3e-3),
    "mnist": dict(net="mlp", hidden=[400], z_dim=50, epochs=10, batch_size=256),
    "fashion-mnist": dict(net="mlp", hidden=[400], z_dim=50, epochs=10, batch_size=256),
}
# image shape and number of images of the named sets, for the memory check before loading them
DATASET_SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist-5k": ((1, 28, 28), 5000), "digits": ((1, 8, 8), 1797),
    "mnist": ((1, 28, 28), 60000), "fashion-mnist": ((1, 28, 28), 60000),
}
MAX_EPOCHS = 1_000_000  # more is a typo, not a run
MAX_LR = 10.0  # an Adam step size beyond this is a typo
SCALED_LIKELIHOODS = ("gaussian", "laplace")  # the likelihoods with an obs_scale
GENERIC_DEFAULTS: dict[str, Any] = dict(
    net="mlp", hidden=[400], z_dim=32, epochs=10, batch_size=128, binarize="dynamic",
    likelihood="bernoulli", lr=1e-3,
)


def auto_device(name: str) -> str:
    """``"auto"``: ``"cuda"`` when a CUDA GPU is available, else ``"cpu"``; other names unchanged."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill ``None`` fields from the data set's defaults and check the numbers."""
    defaults = {**GENERIC_DEFAULTS, **DATASET_DEFAULTS.get(config.dataset, {})}
    values = config.to_dict()
    for key, value in defaults.items():
        if values.get(key) is None:
            values[key] = value
    # Grey-level likelihoods need no binarization; the Bernoulli one does.
    if config.binarize is None and values["likelihood"] != "bernoulli":
        values["binarize"] = "none"
    values["device"] = auto_device(values["device"])  # the run records the device it used
    out = TrainConfig(**values)
    _check(out)
    _check_memory(out)
    return out


def _check(c: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "z_dim", "particles", "eval_batch_size"):
        checks.whole(getattr(c, name), name)
    checks.whole(c.epochs, "epochs", maximum=MAX_EPOCHS)
    checks.whole(c.particles, "particles", maximum=memory.MAX_PARTICLES)
    if c.limit is not None:
        checks.whole(c.limit, "limit")
    if not c.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in c.hidden):
        raise PyrovaeError(f"{checks.label('hidden')} must be sizes >= 1 such as 400 or 512,256, "
                           f"got {c.hidden}")
    checks.seed(c.seed)
    checks.positive(c.lr, "lr")
    if c.lr > MAX_LR:
        raise PyrovaeError(f"{checks.label('lr')} must be at most {MAX_LR:g} (Adam moves each weight by "
                           f"about lr per step), got {c.lr:g}")
    checks.finite(c.beta, "beta", minimum=0, maximum=MAX_BETA)
    parse_lr_schedule(c.lr_schedule)
    if c.clip_norm is not None:
        checks.finite(checks.positive(c.clip_norm, "clip_norm"), "clip_norm", maximum=MAX_CLIP_NORM)
    if c.val_fraction is not None and not (isinstance(c.val_fraction, float) and 0 < c.val_fraction < 1):
        raise PyrovaeError(f"{checks.label('val_fraction')} must be a fraction in (0, 1), such as "
                           f"0.1, got {c.val_fraction!r}")
    if c.patience is not None:
        checks.whole(c.patience, "patience", maximum=MAX_EPOCHS)
        if c.val_fraction is None:
            raise PyrovaeError(f"{checks.label('patience')} stops on the validation ELBO: give "
                               f"{checks.label('val_fraction')} too (never select on the test set)")
    if c.obs_scale is not None and c.likelihood not in SCALED_LIKELIHOODS:
        raise PyrovaeError(f"{checks.label('obs_scale')} applies to the gaussian and laplace "
                           f"likelihoods only, not {c.likelihood!r}: drop it, or choose "
                           f"{checks.label('likelihood')} gaussian or laplace")
    if c.compile not in ("eager", "graph", "auto"):
        raise PyrovaeError(f"{checks.label('compile')} must be eager, graph or auto, got {c.compile!r}")
    if c.device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", c.device):
        raise PyrovaeError(f"{checks.label('device')} must be cpu, cuda, cuda:N or auto, got {c.device!r}")


def _check_memory(c: TrainConfig) -> None:
    """Refuse sizes that cannot fit before any data is loaded: the named sets' image shape, else a
    lower bound (one-pixel images, one example per batch). ``memory.check_memory`` with the loaded
    data's shape is the precise check."""
    if c.model.startswith("user:"):
        return  # the user's model decides its own sizes
    shape, n = DATASET_SIZES.get(c.dataset, ((1,), 1))
    if c.limit is not None:
        n = min(n, c.limit)
    memory.check_memory(c, shape, n)
