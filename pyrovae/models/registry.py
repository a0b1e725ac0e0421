"""Built-in models by name, with their options; and the one function that turns a name or a
user's object into the model a run trains.

A model spec is ``NAME`` or ``NAME:key=value,...``, e.g. ``"vamp:components=50"``,
``"hvae:z1=32,z2=16"`` or ``"iaf:flows=4"``; the options are the class's extra constructor
arguments, listed in :data:`OPTIONS`. :func:`model_name` writes a built-in's full spec (every
option with its value), so a run's config rebuilds the model it trained.

| name | model | options |
| --- | --- | --- |
| ``vae`` | the VAE (:mod:`pyrovae.models.vae`) | |
| ``ae``, ``dae`` | auto-encoder, denoising auto-encoder | (``dae``: ``noise``, its own argument) |
| ``vamp`` | VampPrior (:mod:`pyrovae.models.vamp`) | ``components`` (500) |
| ``hvae`` | two latent layers (:mod:`pyrovae.models.hierarchical`) | ``z1`` (z_dim), ``z2`` (z1 // 2) |
| ``iaf`` | IAF guide (:mod:`pyrovae.models.flows`) | ``flows`` (2) |
| ``gmvae`` | mixture prior (:mod:`pyrovae.models.mixture`) | ``clusters`` (10), ``weights`` (uniform) |
| ``cvae`` | conditional on labels (:mod:`pyrovae.models.conditional`) | ``classes`` (10) |
| ``m2`` | semi-supervised M2 (:mod:`pyrovae.models.semisupervised`) | ``classes`` (10), ``alpha`` (0.1 N) |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyrovae import checks
from pyrovae.errors import PyrovaeError
from pyrovae.models.conditional import CVAE
from pyrovae.models.flows import IAFVAE
from pyrovae.models.hierarchical import HierarchicalVAE
from pyrovae.models.mixture import GMVAE
from pyrovae.models.semisupervised import M2
from pyrovae.models.vae import VAE, AutoEncoder, DenoisingAutoEncoder
from pyrovae.models.vamp import VampVAE

__all__ = ["BUILTINS", "OPTIONS", "build_model", "from_spec", "model_name", "parse_model",
           "spec_name"]

# name -> class; every class takes (shape, z_dim, hidden, net, likelihood, obs_scale[, noise],
# **options)
BUILTINS: dict[str, Callable[..., VAE]] = {
    "vae": VAE, "ae": AutoEncoder, "dae": DenoisingAutoEncoder,
    "vamp": VampVAE, "hvae": HierarchicalVAE, "iaf": IAFVAE,
    "gmvae": GMVAE, "cvae": CVAE, "m2": M2,
}

# name -> {option: the type its value is read as}, in the order model_name writes them; the class
# checks the values
OPTIONS: dict[str, dict[str, type]] = {
    "vamp": {"components": int},
    "hvae": {"z1": int, "z2": int},
    "iaf": {"flows": int},
    "gmvae": {"clusters": int, "weights": str},
    "cvae": {"classes": int},
    "m2": {"classes": int, "alpha": float},
}


def _unknown(name: str) -> PyrovaeError:
    return PyrovaeError(f"unknown {checks.label('model')} {name!r}: choose one of {', '.join(BUILTINS)}, "
                        "or pass your own object with Pyro model() and guide() methods")


def _value(name: str, key: str, text: str) -> Any:
    kind = OPTIONS[name][key]
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else f"a {kind.__name__}"
        raise PyrovaeError(f"{checks.label('model')} {name}: option {key} must be {what}, got "
                           f"{text!r}") from None


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``"vamp:components=50"`` -> ``("vamp", {"components": 50})``: the built-in's name and the
    options given (read as their types; the model's class checks their values)."""
    if not isinstance(spec, str):
        raise PyrovaeError(f"{checks.label('model')} must be a built-in name such as 'vae' or an "
                           f"object with model() and guide() methods, got {type(spec).__name__}")
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if name not in BUILTINS:
        raise _unknown(name)
    valid = OPTIONS.get(name, {})
    options: dict[str, Any] = {}
    for item in (rest.split(",") if sep else []):
        key, eq, text = (part.strip() for part in item.partition("="))
        if key not in valid or not eq or not text or key in options:
            keys = ", ".join(f"{k}=" for k in valid) or "none"
            problem = f"repeats {key!r}" if key in options else f"has no option {item.strip()!r}"
            raise PyrovaeError(f"{checks.label('model')} {spec!r}: {name} {problem}; its options are "
                               f"{keys} (written {name}:key=value,...)")
        options[key] = _value(name, key, text)
    return name, options


def build_model(name: str, shape: tuple[int, ...], z_dim: int, hidden: list[int], net: str,
                likelihood: str, obs_scale: float | None, noise: str | None = None) -> VAE:
    """The built-in named by the spec ``name`` (``NAME[:key=value,...]``) for inputs of ``shape``;
    ``noise`` is for ``dae`` only."""
    name, options = parse_model(name)
    if noise is not None and name != "dae":
        raise PyrovaeError(f"noise (--noise) applies to the model 'dae' only, not {name!r}")
    extra = {"noise": noise} if name == "dae" else {}
    return BUILTINS[name](shape, z_dim, hidden, net, likelihood, obs_scale, **extra, **options)


def from_spec(spec: dict[str, Any]) -> VAE:
    """Rebuild a built-in from its :attr:`~pyrovae.models.vae.VAE.spec` (plain data)."""
    spec = dict(spec)
    name = spec.pop("model", "vae")
    if name not in BUILTINS:
        raise _unknown(name)
    return BUILTINS[name](**spec)


def spec_name(spec: dict[str, Any]) -> str:
    """The full model spec string of a built-in's :attr:`~pyrovae.models.vae.VAE.spec`:
    ``"vamp:components=500"``, ``"vae"``."""
    name = spec.get("model", "vae")
    options = [f"{key}={spec[key]}" for key in OPTIONS.get(name, {}) if spec.get(key) is not None]
    return f"{name}:{','.join(options)}" if options else name


def model_name(model: Any) -> str:
    """The full spec (``"vae"``, ``"vamp:components=500"``...) for built-ins, ``"user:module.Class"``
    for a user's object."""
    if isinstance(model, VAE) and BUILTINS.get(model.name) is type(model):
        return spec_name(model.spec)
    cls = type(model)
    return f"user:{cls.__module__}.{cls.__qualname__}"
