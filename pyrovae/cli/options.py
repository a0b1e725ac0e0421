"""Command-line options shared by the commands that train (train, sweep, baselines, compare).

One table from config field to flag, so every command spells an option the same way and
:func:`config_from` turns parsed arguments back into :class:`~pyrovae.config.TrainConfig` fields.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection
from typing import Any


def sizes(text: str) -> list[int]:
    """``"400"`` or ``"512,256"`` -> ``[512, 256]`` (argparse type)."""
    try:
        values = [int(s) for s in text.split(",")]  # an empty item ("8,,8") is an error too
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 400 or 512,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be whole numbers >= 1, got {text!r}")
    return values


def obs_scale(text: str) -> float | None:
    """A number, or ``"learned"`` -> ``None`` (argparse type)."""
    if text == "learned":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'learned', got {text!r}") from None


# config field -> (flag, argparse keyword arguments); a field left out of the command line is None
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "dataset": ("--dataset", dict(help="mnist-5k (default, offline), digits, "
                                  "mnist, fashion-mnist, idx:PATH, npy:PATH, npz:PATH")),
    "data_dir": ("--data-dir", dict(help="folder holding the IDX files (searched first)")),
    "binarize": ("--binarize", dict(choices=["none", "static", "dynamic"], help="binarize grey "
                                    "levels: none, static (one draw) or dynamic (every epoch)")),
    "likelihood": ("--likelihood", dict(help="bernoulli (default), continuous-bernoulli, "
                                        "gaussian, laplace")),
    "obs_scale": ("--obs-scale", dict(type=obs_scale, help="gaussian/laplace pixel scale: a "
                                      "number, or 'learned' (default)")),
    "model": ("--model", dict(help="vae (default), ae (deterministic auto-encoder), dae "
                              "(denoising), or module:Class, your own model class (built with no "
                              "arguments; the module is imported from the current folder or the path)")),
    "noise": ("--noise", dict(help="dae input corruption: gaussian:STD (default gaussian:0.3) or "
                              "mask:PROB")),
    "net": ("--net", dict(help="mlp (default) or conv")),
    "hidden": ("--hidden", dict(type=sizes, help="dense hidden sizes, e.g. 400 or 512,256")),
    "z_dim": ("--z-dim", dict(type=int, help="latent dimensions")),
    "estimator": ("--estimator", dict(help="objective: trace (default), meanfield, tracegraph, enum, "
                                      "score, stl, iwae:K, renyi:alpha,K, dreg:K, tail-adaptive:K")),
    "particles": ("--particles", dict(type=int, help="samples per example per step")),
    "beta": ("--beta", dict(type=float, help="KL weight (default 1)")),
    "kl_schedule": ("--kl-schedule", dict(help="constant, linear[:steps=N|epochs=E], "
                                          "cyclical[:cycles=M,ratio=R], sigmoid[:steps=N|epochs=E,k=K]")),
    "epochs": ("--epochs", dict(type=int, help="total epochs (with --resume: train up to this)")),
    "batch_size": ("--batch-size", dict(type=int)),
    "lr": ("--lr", dict(type=float, help="Adam learning rate (default 1e-3)")),
    "lr_schedule": ("--lr-schedule", dict(help="constant (default), step:every=E,gamma=G, "
                                          "exponential:gamma=G or cosine: the learning rate per epoch")),
    "clip_norm": ("--clip-norm", dict(type=float, help="clip the gradients' global norm to this")),
    "val_fraction": ("--val-fraction", dict(type=float, help="hold out this fraction of the training "
                                            "split for validation: held-out metrics, best.pt and "
                                            "early stopping use it, never the test set")),
    "patience": ("--patience", dict(type=int, help="early stopping: epochs without a better "
                                    "validation ELBO (needs --val-fraction)")),
    "seed": ("--seed", dict(type=int)),
    "device": ("--device", dict(help="cpu (default), cuda, cuda:N, or auto (cuda when available)")),
    "compile": ("--compile", dict(choices=["eager", "graph", "auto"], help="eager (default); "
                                  "graph: capture the SVI step as a CUDA graph (GPU only); auto: "
                                  "graph where the device and estimator allow, else eager")),
    "limit": ("--limit", dict(type=int, help="use only N examples, chosen at random (smoke runs)")),
}


def user_model(spec: str | None) -> Any:
    """``"module:Class"`` -> a new ``Class()`` from ``module`` (the current folder is searched first);
    a built-in spec (``"vae"``, ``"vamp:components=50"``) or ``None`` -> ``None``."""
    import importlib
    import sys

    from pyrovae.errors import PyrovaeError
    from pyrovae.models.registry import BUILTINS

    module_name, _, attr = (spec or "").partition(":")
    if spec is None or not attr or module_name.strip() in BUILTINS:
        return None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PyrovaeError(f"--model {spec}: cannot load {attr!r} from module {module_name!r} ({exc}); "
                           "write --model module:Class with the module importable from here") from None
    try:
        return cls()
    except TypeError as exc:
        raise PyrovaeError(f"--model {spec}: {attr}() must build the model with no arguments ({exc}); "
                           "give its arguments defaults, or train it from Python") from None


def add_config_args(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> None:
    """Add the training options, except the fields in ``exclude``."""
    for field, (flag, kwargs) in OPTIONS.items():
        if field not in exclude:
            parser.add_argument(flag, **kwargs)


def config_from(args: argparse.Namespace, exclude: Collection[str] = ()) -> dict[str, Any]:
    """The training options given on the command line (absent ones take the defaults; an empty
    text such as ``--dataset ''`` is an error, not the default)."""
    from pyrovae.errors import PyrovaeError

    given = {f: getattr(args, f) for f in OPTIONS
             if f not in exclude and getattr(args, f, None) is not None}
    for field, value in given.items():
        if isinstance(value, str) and not value.strip():
            raise PyrovaeError(f"{OPTIONS[field][0]} is empty: give a value, or leave the option "
                               "out for its default")
    return given


def run_folder(path: str) -> str:
    """The run folder a command reads: ``RUN``, or ``RUN`` for ``RUN/checkpoint.pt`` (a path to the
    checkpoint file is taken as its folder); any other file is an error naming it."""
    from pathlib import Path

    from pyrovae.errors import PyrovaeError
    from pyrovae.runs import CHECKPOINT

    p = Path(path)
    if p.is_file():
        if p.name == CHECKPOINT:
            return str(p.parent)
        raise PyrovaeError(f"{path} is a file, not a run folder: give the folder that holds "
                           f"{CHECKPOINT} (the --out of pyrovae train)")
    return path


def writable(path: str | os.PathLike, flag: str = "--out", folder: bool = False) -> None:
    """Refuse a path the command cannot write because one of its parent folders is a file (or,
    with ``folder=True``, because it is a file itself)."""
    from pathlib import Path

    from pyrovae.errors import PyrovaeError

    if folder and Path(path).exists() and not Path(path).is_dir():
        raise PyrovaeError(f"{flag} {path} is a file: give a folder")
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise PyrovaeError(f"{flag} {path}: {parent} is a file, not a folder: choose a path "
                                   "in a folder")
            return


def run_model(spec: str | None) -> Any:
    """``--model`` of the commands that read a run: ``module:Class`` of the user's model the run
    trained, else an error (a built-in run rebuilds its model from the checkpoint)."""
    from pyrovae.errors import PyrovaeError

    if spec is None:
        return None
    model = user_model(spec)
    if model is None:
        raise PyrovaeError(f"--model {spec!r}: give module:Class, the class of the user model the run "
                           "trained (a built-in model is rebuilt from the checkpoint: leave --model out)")
    return model
