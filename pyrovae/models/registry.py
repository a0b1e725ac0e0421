"""Built-in models by name: ``vae``, ``ae``, ``dae``; and the one function that turns a name or a
user's object into the model a run trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyrovae.errors import PyrovaeError
from pyrovae.models.vae import VAE, AutoEncoder, DenoisingAutoEncoder

__all__ = ["BUILTINS", "build_model", "from_spec", "model_name"]

# name -> class; every class takes (shape, z_dim, hidden, net, likelihood, obs_scale[, noise])
BUILTINS: dict[str, Callable[..., VAE]] = {"vae": VAE, "ae": AutoEncoder, "dae": DenoisingAutoEncoder}


def _unknown(name: str) -> PyrovaeError:
    return PyrovaeError(f"unknown model {name!r}: choose one of {', '.join(BUILTINS)}, or pass your "
                        "own object with Pyro model() and guide() methods")


def build_model(name: str, shape: tuple[int, ...], z_dim: int, hidden: list[int], net: str,
                likelihood: str, obs_scale: float | None, noise: str | None = None) -> VAE:
    """The built-in ``name`` for inputs of ``shape``; ``noise`` is for ``dae`` only."""
    if name not in BUILTINS:
        raise _unknown(name)
    if noise is not None and name != "dae":
        raise PyrovaeError(f"noise (--noise) applies to the model 'dae' only, not {name!r}")
    extra = {"noise": noise} if name == "dae" else {}
    return BUILTINS[name](shape, z_dim, hidden, net, likelihood, obs_scale, **extra)


def from_spec(spec: dict[str, Any]) -> VAE:
    """Rebuild a built-in from its :attr:`~pyrovae.models.vae.VAE.spec` (plain data)."""
    spec = dict(spec)
    name = spec.pop("model", "vae")
    if name not in BUILTINS:
        raise _unknown(name)
    return BUILTINS[name](**spec)


def model_name(model: Any) -> str:
    """``"vae"`` etc. for built-ins, ``"user:module.Class"`` for a user's object."""
    if isinstance(model, VAE) and BUILTINS.get(model.name) is type(model):
        return model.name
    cls = type(model)
    return f"user:{cls.__module__}.{cls.__qualname__}"
