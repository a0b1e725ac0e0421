"""The model contract, read from traces: what pyrovae needs of a user's Pyro program.

A *model* is any object with Pyro ``model(*batch)`` and ``guide(*batch)`` methods (an
``nn.Module``, a ``PyroModule`` or a plain object). pyrovae asks only what Pyro asks: every sample
site lives in a ``pyro.plate`` over the batch's first dimension, and data are observed through
``obs=``. Everything else is found by running model and guide once under ``poutine.trace``:

* latent sites: the guide's unobserved sample sites; observed sites: the model's ``obs=`` sites;
* a model latent site the guide does not sample must be discrete and enumerated (``enum``);
* ``max_plate_nesting``: the model's ``max_plate_nesting`` attribute, else the deepest plate seen;
* parameters: every ``pyro.param`` and ``pyro.module`` parameter the two programs touch.

Optional attributes: ``inputs`` (the data fields the batch holds, default ``("x",)``; a conditional
model takes ``("x", "y")``) and ``max_plate_nesting``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import nn

from pyrovae.errors import PyrovaeError

__all__ = ["Program", "forget_params", "inputs_of", "inspect_program", "load_state",
           "module_parameter_ids", "own_params", "param_tensor", "parameters", "remember_params",
           "rng_untouched", "state_of", "traces", "with_own_params"]

INPUTS = ("x", "y")  # data fields a batch can carry, in Dataset order


@dataclass(frozen=True)
class Program:
    """What one trace of model and guide showed (names in execution order)."""

    latent: tuple[str, ...]  # the guide's unobserved sample sites
    observed: tuple[str, ...]  # the model's observed sample sites
    model_only: tuple[str, ...]  # model latent sites the guide does not sample (enumerated)
    discrete: tuple[str, ...]  # guide latent sites without rsample
    batch_plate: str  # the plate over the batch's first dimension
    batch_dim: int  # its (negative) dim
    max_plate_nesting: int
    params: tuple[str, ...]  # param-store names used by model and guide, beyond the module's own


def inputs_of(model: Any, inputs: Sequence[str] | None = None) -> tuple[str, ...]:
    """The data fields the model's batch holds: ``inputs`` if given, else ``model.inputs``, else
    ``("x",)``; checked."""
    what = "inputs" if inputs is not None else "model.inputs"
    fields = tuple(inputs if inputs is not None else getattr(model, "inputs", ("x",)))
    if not fields or any(i not in INPUTS for i in fields) or len(set(fields)) != len(fields):
        raise PyrovaeError(f"{what} must name data fields among {INPUTS}, such as ('x',) or "
                           f"('x', 'y'), got {fields!r}")
    return fields


def _check_methods(model: Any) -> None:
    for name in ("model", "guide"):
        if not callable(getattr(model, name, None)):
            raise PyrovaeError(
                f"{type(model).__name__} has no {name}() method: a pyrovae model is an object with "
                "Pyro model(*batch) and guide(*batch) methods, or a built-in name such as 'vae'")


def _run(fn, what: str, args) -> poutine.Trace:
    try:
        return fn(*args)
    except PyrovaeError:
        raise
    except Exception as exc:  # a user's program failing on its first batch: name the batch
        shapes = ", ".join(str(tuple(a.shape)) if torch.is_tensor(a) else type(a).__name__ for a in args)
        raise PyrovaeError(f"running the {what} on a batch of shapes ({shapes}) failed with "
                           f"{type(exc).__name__}: {exc}") from exc


def rng_untouched(batch: Sequence[torch.Tensor]):
    """A fork of torch's random state (CPU and the batch's GPU): inspecting a program draws noise,
    and must not shift the random stream that training and evaluation use."""
    devices = sorted({t.device.index or 0 for t in batch if t.device.type == "cuda"})
    return torch.random.fork_rng(devices=devices)


def traces(model: Any, batch: Sequence[torch.Tensor]) -> tuple[poutine.Trace, poutine.Trace]:
    """``(model_trace, guide_trace)``: the guide traced, the model replayed against it."""
    _check_methods(model)
    args = tuple(batch)
    with pyro.validation_enabled(False):
        guide_tr = _run(lambda *a: poutine.trace(model.guide).get_trace(*a), "guide", args)
        model_tr = _run(lambda *a: poutine.trace(poutine.replay(model.model, trace=guide_tr))
                        .get_trace(*a), "model", args)
    return model_tr, guide_tr


def inspect_program(model: Any, batch: Sequence[torch.Tensor]) -> Program:
    """Run model and guide once on ``batch`` and check the contract (see the module docstring).

    ``batch`` should hold at least 2 examples, so that the plate over the batch can be told from
    other plates. Raises :class:`PyrovaeError` naming the site and the fix.
    """
    with rng_untouched(batch):
        model_tr, guide_tr = traces(model, batch)
    owned = module_parameter_ids(model)
    params = tuple(dict.fromkeys(
        name for tr in (guide_tr, model_tr) for name, site in tr.nodes.items()
        if site["type"] == "param" and id(_init_tensor(site)) not in owned))
    model_tr, guide_tr = prune_subsample_sites(model_tr), prune_subsample_sites(guide_tr)
    model_sites = [s for s in model_tr.nodes.values() if s["type"] == "sample"]
    guide_sites = [s for s in guide_tr.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    observed = tuple(s["name"] for s in model_sites if s["is_observed"])
    if not observed:
        raise PyrovaeError("the model observes nothing: a pyrovae model must observe its data with "
                           "pyro.sample(name, distribution, obs=x)")
    batch_plate, batch_dim = _batch_plate(model, batch, model_sites, guide_sites)
    guide_names = {s["name"] for s in guide_sites}
    model_only = tuple(s["name"] for s in model_sites
                       if not s["is_observed"] and s["name"] not in guide_names)
    for name in model_only:
        site = model_tr.nodes[name]
        if not getattr(site["fn"], "has_enumerate_support", False):
            raise PyrovaeError(
                f"model site {name!r} has no guide site, and {type(site['fn']).__name__} cannot be "
                "enumerated: sample it in the guide too (same name), or make it discrete and train "
                "with estimator 'enum'")
    dims = [f.dim for s in model_sites + guide_sites for f in s["cond_indep_stack"] if f.vectorized]
    found = -min(dims) if dims else 0
    mpn = getattr(model, "max_plate_nesting", None)
    if mpn is None:
        mpn = found
    elif isinstance(mpn, bool) or not isinstance(mpn, int) or mpn < found:
        raise PyrovaeError(f"model.max_plate_nesting = {mpn!r}, but its plates reach dim {-found}: set "
                           f"it to {found} or more, or remove it to have it found")
    return Program(
        latent=tuple(s["name"] for s in guide_sites),
        observed=observed,
        model_only=model_only,
        discrete=tuple(s["name"] for s in guide_sites if not s["fn"].has_rsample),
        batch_plate=batch_plate,
        batch_dim=batch_dim,
        max_plate_nesting=int(mpn),
        params=params,
    )


def module_parameter_ids(model: Any) -> set[int]:
    """``id`` of every parameter the model holds as an ``nn.Module``."""
    return {id(p) for p in model.parameters()} if isinstance(model, nn.Module) else set()


def _init_tensor(site: dict) -> Any:
    # pyro.module registers each module parameter as pyro.param(name, parameter): args[1]
    args = site["args"]
    return args[1] if len(args) > 1 else None


def param_tensor(model: Any, site: dict) -> torch.Tensor:
    """The trainable tensor behind a ``param`` site: the module's own parameter for ``pyro.module``
    sites, else the param store's unconstrained value."""
    init = _init_tensor(site)
    if init is not None and id(init) in module_parameter_ids(model):
        return init
    return pyro.get_param_store().get_param(site["name"]).unconstrained()


def _size_n_plates(site: dict, n: int) -> set[tuple[str, int]]:
    return {(f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized and f.size == n}


def _batch_plate(model: Any, batch: Sequence[torch.Tensor], model_sites: list[dict],
                 guide_sites: list[dict]) -> tuple[str, int]:
    """``(name, dim)`` of the plate over the batch: of size ``n`` and shared by every sample site.
    A plate inside it that happens to have size ``n`` too (a per-feature plate) is told apart by
    tracing once more with one example fewer."""
    n = int(batch[0].shape[0])
    common: set[tuple[str, int]] | None = None
    for role, sites in (("model", model_sites), ("guide", guide_sites)):
        for site in sites:
            frames = _size_n_plates(site, n)
            if not frames:
                raise PyrovaeError(
                    f"{role} site {site['name']!r} is not inside a plate over the batch (size {n}): "
                    f"wrap it in `with pyro.plate('data', x.shape[0]):` so each example has its own "
                    "latent and observation")
            common = frames if common is None else common & frames
    if not common:
        names = sorted({f[0] for s in model_sites + guide_sites for f in _size_n_plates(s, n)})
        raise PyrovaeError(f"sites sit in different plates over the batch ({names}): use one plate "
                           "(one name and dim) for the batch in model and guide")
    if len(common) > 1 and n >= 3:
        fewer = tuple(t[:n - 1] for t in batch)
        with rng_untouched(fewer):
            model_tr, guide_tr = traces(model, fewer)
        sites = [s for tr in (model_tr, guide_tr) for s in tr.nodes.values()
                 if s["type"] == "sample" and not site_is_subsample(s)]
        follows = set.intersection(*(_size_n_plates(s, n - 1) for s in sites))
        common = {(name, dim) for name, dim in common if any(name == f for f, _ in follows)} or common
    if len(common) > 1:  # e.g. two examples of two features: the outermost plate
        return min(common, key=lambda frame: frame[1])
    return next(iter(common))


def parameters(model: Any, program: Program) -> list[torch.Tensor]:
    """Every trainable tensor of the model: its ``nn.Module`` parameters and the unconstrained values
    of the param-store entries the program uses (``pyro.param``, ``pyro.module``), without repeats."""
    found: dict[int, torch.Tensor] = {}
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.requires_grad:
                found.setdefault(id(p), p)
    store = pyro.get_param_store()
    for name in program.params:
        if name in store:
            p = store.get_param(name).unconstrained()
            if p.requires_grad:
                found.setdefault(id(p), p)
    return list(found.values())


def state_of(model: Any, program: Program) -> dict[str, dict[str, torch.Tensor]]:
    """Plain tensors only: the module's ``state_dict`` and the unconstrained param-store values."""
    module = {}
    if isinstance(model, nn.Module):
        module = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    store = pyro.get_param_store()
    params = {name: store.get_param(name).unconstrained().detach().cpu() for name in program.params
              if name in store}
    return {"module": module, "params": params}


def load_state(model: Any, program: Program, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write :func:`state_of`'s tensors back (parameters must exist: inspect the program first)."""
    if isinstance(model, nn.Module) and state.get("module"):
        try:
            model.load_state_dict(state["module"])
        except RuntimeError as exc:
            raise PyrovaeError(f"the checkpoint's weights do not fit this {type(model).__name__} "
                               f"({str(exc).splitlines()[0]}): build the model with the arguments "
                               "it was trained with") from None
    store = pyro.get_param_store()
    missing = sorted(set(state.get("params", {})) - set(store.keys()))
    if missing:
        raise PyrovaeError(f"the checkpoint holds parameters {missing} that this model does not create: "
                           "pass the model the run was trained with")
    with torch.no_grad():
        for name, value in state.get("params", {}).items():
            target = store.get_param(name).unconstrained()
            if target.shape != value.shape:
                raise PyrovaeError(f"parameter {name!r} has shape {tuple(target.shape)} here and "
                                   f"{tuple(value.shape)} in the checkpoint: build the model as trained")
            target.copy_(value.to(target.device, target.dtype))


# ---- pyro.param values belong to the object that trained them ---------------------------------

# model object -> {param-store name: (constrained value, constraint)} after train() or load_run()
_OWN_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ACTIVE: contextvars.ContextVar[int | None] = contextvars.ContextVar("pyrovae_own_params", default=None)


def remember_params(model: Any, values: dict[str, tuple[torch.Tensor, Any]]) -> None:
    """Record the ``pyro.param`` values ``model`` was trained with (or loaded)."""
    try:
        _OWN_PARAMS[model] = dict(values)
    except TypeError:  # an object that takes no weak references: Pyro's global store only
        pass


def forget_params(model: Any) -> dict[str, tuple[torch.Tensor, Any]]:
    """Drop (and return) the record: training is about to change the values."""
    try:
        return _OWN_PARAMS.pop(model, {})
    except TypeError:
        return {}


@contextlib.contextmanager
def own_params(model: Any) -> Iterator[None]:
    """Run the block with ``model``'s own ``pyro.param`` values in Pyro's param store.

    Pyro keeps ``pyro.param`` values in one global store, by name: two trained VampPriors both
    call theirs ``"pseudo_inputs"``. Inside this block the store holds what this object was trained
    with (a scope of its own, left as it was afterwards); objects pyrovae has not trained use the
    global store as Pyro does.
    """
    values = _OWN_PARAMS.get(model) if _weakrefable(model) else None
    if values is None or _ACTIVE.get() == id(model):
        yield
        return
    store = pyro.get_param_store()
    token = _ACTIVE.set(id(model))
    try:
        with store.scope():
            for name, (value, constraint) in values.items():
                store.setdefault(name, value.detach().clone(), constraint)  # a leaf of its own
            yield
    finally:
        _ACTIVE.reset(token)


def with_own_params(fn: Callable) -> Callable:
    """Decorate a function whose first argument is a model with :func:`own_params`."""
    @functools.wraps(fn)
    def wrapped(model, *args, **kwargs):
        with own_params(model):
            return fn(model, *args, **kwargs)
    return wrapped


def _weakrefable(model: Any) -> bool:
    try:
        weakref.ref(model)
    except TypeError:
        return False
    return True
