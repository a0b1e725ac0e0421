"""The one training loop: SVI on a Pyro ELBO, in-memory batches, metrics and checkpoints per epoch.

Read top to bottom: :func:`train` resolves the config, loads data, builds (or takes) the model,
checks its Pyro program once (:func:`pyrovae.models.contract.inspect_program`), builds the
estimator, the optimizer over every parameter and the KL schedule, then :func:`fit` runs the epochs.
The CLI, the Python API, the notebooks, every experiment and the Bernoulli toy call it; it trains any
object with Pyro ``model`` and ``guide`` methods, built-in or the user's own.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from pyrovae import checks, runs
from pyrovae.data.datasets import Dataset, binarize, check_binarize_mode, load_dataset
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.generate import remember_inputs
from pyrovae.evaluation.metrics import active_units, elbo_terms
from pyrovae.infer.beta import KLWeight
from pyrovae.infer.registry import enumerates, make_elbo
from pyrovae.infer.schedules import Schedule, from_dict, parse_schedule, to_dict
from pyrovae.models.contract import (
    Program,
    forget_params,
    inputs_of,
    inspect_program,
    load_state,
    parameters,
    remember_params,
    rng_untouched,
    state_of,
)
from pyrovae.models.registry import build_model, from_spec, model_name
from pyrovae.training import distributed, steps
from pyrovae.training.config import BUILTIN_OPTIONS, TrainConfig, resolve

EVAL_SEED = 1234  # fixed draw for binarizing held-out data, so runs compare on the same images


RESUMABLE = ("epochs", "device", "lr", "data_dir", "compile")  # what a resumed run may change
CHECKPOINT_FORMAT = "pyrovae-checkpoint-2"
READABLE_FORMATS = ("pyrovae-checkpoint-1", CHECKPOINT_FORMAT)


class TrainingDiverged(PyrovaeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


@dataclass
class Run:
    """A trained (or training) model with its data, config, metric rows and run folder.

    ``model`` is the object whose Pyro ``model``/``guide`` were trained (a built-in or the user's);
    ``program`` what its traces showed (latent and observed sites, plates); ``inputs`` the data
    fields its batches hold.
    """

    model: Any
    data: Dataset | None
    config: TrainConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    schedule: Schedule | None = None
    compile: str = "eager"  # how the step ran: eager or graph
    world_size: int = 1  # data-parallel processes
    program: Program | None = None
    inputs: tuple[str, ...] = ("x",)

    @property
    def vae(self) -> Any:
        """The trained model (the name earlier versions used)."""
        return self.model


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with a clear error when CUDA is asked for but absent."""
    if name != "cpu" and not (name == "cuda" or re.fullmatch(r"cuda:\d+", name)):
        raise PyrovaeError(f"{checks.label('device')} must be cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PyrovaeError(
            f"--device {name} asked for, but no CUDA GPU is available: use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise PyrovaeError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(name)


def prepare_data(config: TrainConfig, data: Dataset | None = None) -> Dataset:
    """Load (unless given), cut to ``limit``, binarize held-out (and static train) data."""
    check_binarize_mode(config.binarize)
    if data is None:
        data = load_dataset(config.dataset, config.data_dir)
    if config.limit is not None:
        data = data.subset(config.limit, config.limit)
    if config.binarize != "none":
        for what, x in (("training data", data.train_x), ("held-out data", data.test_x)):
            if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                raise PyrovaeError(f"{what} must lie in [0, 1] to be binarized: rescale it")
        gen = torch.Generator().manual_seed(EVAL_SEED)
        test_x = binarize(data.test_x.cpu(), gen).to(data.test_x.device)
        train_x = data.train_x
        if config.binarize == "static":
            train_x = binarize(train_x.cpu(), torch.Generator().manual_seed(config.seed))
        data = Dataset(data.name, train_x.to(data.train_x.device), test_x, data.train_y,
                       data.test_y)
    return data


def build_vae(config: TrainConfig, shape: tuple[int, ...]) -> Any:
    """The built-in model a resolved config names, for images of ``shape = (C, H, W)``."""
    return build_model(config.model, shape, config.z_dim, config.hidden, config.net, config.likelihood,
                       config.obs_scale, config.noise)


def train(
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    model: Any = None,
    data: Dataset | None = None,
    inputs: Sequence[str] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
    callbacks: Sequence[Callable[[Run, dict[str, Any]], Any]] = (),
    **overrides: Any,
) -> Run:
    """Train a model and return the :class:`Run`; keyword ``overrides`` set config fields.

    ``model``: a built-in name (``"vae"``, ``"ae"``, ``"dae"``; default the config's) or any object
    with Pyro ``model(*batch)`` and ``guide(*batch)`` methods (see :mod:`pyrovae.models.contract`),
    trained in place. ``inputs``: the data fields each batch holds (default ``model.inputs`` or
    ``("x",)``; ``("x", "y")`` passes labels too). ``data``: a :class:`Dataset` to train on instead of
    the config's ``dataset``. ``callbacks``: functions ``f(run, row)`` called after every epoch with
    its metrics row; one that returns ``True`` stops training there.

    With ``run_dir``, writes ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` (each epoch) and
    ``figures/``. ``resume=True`` continues the run in ``run_dir`` from its checkpoint up to
    ``epochs`` (only ``epochs``, ``device``, ``lr``, ``data_dir`` and ``compile`` may be overridden
    then; a user model must be passed again). A folder that already holds a checkpoint is only reused
    with ``resume=True`` or ``overwrite=True``.

    Under ``torchrun`` (or in a process group the caller made) every rank trains on its shard of each
    global batch of ``batch_size`` and rank 0 alone writes ``run_dir`` and evaluates; see
    :mod:`pyrovae.training.distributed`.
    """
    user_model = model if model is not None and not isinstance(model, str) else None
    if isinstance(model, str):
        overrides["model"] = model
    ckpt = None
    if resume:
        if run_dir is None:
            raise PyrovaeError("resume=True needs the run folder: pass run_dir (--resume RUN_DIR)")
        ckpt = _load_training_checkpoint(run_dir)
        saved = dict(ckpt["config"])
        if user_model is not None:
            overrides.pop("model", None)
        bad = sorted(k for k, v in overrides.items() if k not in RESUMABLE
                     and v is not None and v != saved.get(k))
        if bad:
            raise PyrovaeError(f"cannot change {bad} when resuming: only {', '.join(RESUMABLE)}")
        saved.update({k: v for k, v in overrides.items() if v is not None})
        config = TrainConfig.from_dict(saved)
        if config.model.startswith("user:") and user_model is None:
            raise PyrovaeError(f"{run_dir} trained a user model ({config.model[5:]}): resume it with "
                               "train(model=YourModel(...), run_dir=..., resume=True)")
    else:
        if run_dir is not None and not overwrite and (Path(run_dir) / runs.CHECKPOINT).exists():
            raise PyrovaeError(f"{run_dir} already holds a trained run: resume it with resume=True "
                               "(--resume), pass overwrite=True (--overwrite) to replace it, or choose "
                               "another run_dir (--out)")
        given = dict(config) if isinstance(config, dict) else {}
        if data is not None and "dataset" not in given and "dataset" not in overrides \
                and not isinstance(config, TrainConfig):
            overrides["dataset"] = data.name  # record what was trained on, not the default
        if user_model is not None:
            built = sorted(k for k in BUILTIN_OPTIONS if overrides.get(k, given.get(k)) is not None)
            if built:
                raise PyrovaeError(f"{built} configure the built-in models; your {type(user_model).__name__} "
                                   "is built by you: set them in its constructor")
            overrides["model"] = model_name(user_model)
            if overrides.get("binarize", given.get("binarize")) is None:
                overrides["binarize"] = "none"  # the user's likelihood decides what data it takes
        base = config.to_dict() if isinstance(config, TrainConfig) else TrainConfig().to_dict()
        config = TrainConfig.from_dict({**base, **given, **overrides})
    config = resolve(config)
    ctx = distributed.setup(config.device)
    try:
        return _train(config, ctx, ckpt, run_dir, data, user_model, inputs, progress, figures,
                      tuple(callbacks))
    finally:
        distributed.teardown(ctx)


def _train(config: TrainConfig, ctx: distributed.Context, ckpt: dict | None,
           run_dir: str | os.PathLike | None, data: Dataset | None, user_model: Any,
           inputs: Sequence[str] | None, progress: bool, figures: bool,
           callbacks: tuple[Callable, ...]) -> Run:
    device = resolve_device(distributed.device_name(ctx, config.device))
    data = prepare_data(config, data).to(device)
    mode, why = steps.choose(config.compile, device, config.estimator)
    if mode == "graph" and len(data.train_x) < config.batch_size:
        raise PyrovaeError(f"--compile graph trains on full batches only, and the {len(data.train_x)} "
                           f"training examples do not fill one --batch-size {config.batch_size}: use a "
                           "smaller --batch-size or --compile eager")
    if mode == "graph" and config.batch_size < ctx.world_size:
        raise PyrovaeError(f"--compile graph needs every rank to get examples: --batch-size "
                           f"{config.batch_size} is below the {ctx.world_size} processes")
    pyro.set_rng_seed(config.seed)  # the network's initial weights depend on the seed alone
    model = user_model if user_model is not None else build_vae(config, data.shape)
    if isinstance(model, nn.Module):
        model.to(device)
    fields = inputs_of(model, inputs)
    train_batch, test_batch = data.inputs("train", fields), data.inputs("test", fields)
    remember_inputs(model, train_batch)
    if config.binarize == "none" and hasattr(model, "likelihood") and user_model is None:
        model.likelihood.check(data.train_x, "training data")
        model.likelihood.check(data.test_x, "held-out data")
    if why is not None and ctx.is_main:
        print(f"pyrovae: --compile auto trains eagerly: {why}", file=sys.stderr)
    if not ctx.is_main:
        run_dir = None  # only rank 0 writes
    run = Run(model, data, config, [], None, compile=mode, world_size=ctx.world_size, inputs=fields)
    # CUDA streams, graphs and the default generator belong to the current device: make it ours
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    store = pyro.get_param_store()
    outer = forget_params(model)  # this object's pyro.param values from an earlier train()
    with store.scope(), on_device:  # no param names leak into other models while training
        program = _check_program(model, train_batch, config)
        _adopt_params(outer, program)  # this object's pyro.param values continue, like its modules
        run.program = program
        elbo = make_elbo(config.estimator, config.particles, program.max_plate_nesting)
        params = parameters(model, program)
        if not params:
            raise PyrovaeError("the model has no trainable parameters: register networks with "
                               "pyro.module (or use PyroModule) and create pyro.param values in "
                               "model or guide")
        distributed.broadcast_parameters(ctx, params)
        capturable = mode == "graph" and device.type == "cuda"
        optimizer = make_optimizer(params, config.lr, capturable=capturable)
        n = len(train_batch[0])
        steps_per_epoch = n // config.batch_size if mode == "graph" else math.ceil(n / config.batch_size)
        if ckpt is not None:
            load_state(model, program, _checkpoint_state(ckpt))
            optimizer.load_state_dict(ckpt["optimizer"])
            _restore_optimizer_flags(optimizer, config.lr, capturable=capturable)
            run.schedule = from_dict(ckpt["schedule"])
        else:
            run.schedule = parse_schedule(config.kl_schedule, config.beta,
                                          steps_per_epoch * config.epochs, steps_per_epoch)
        if run_dir is not None:  # the program and the estimator passed their checks: write
            run_dir = run.run_dir = runs.make_run_dir(run_dir, config.dataset)
            runs.write_config(run_dir, config.to_dict())
            if ckpt is not None:
                runs.truncate_metrics(run_dir, "epoch", ckpt["epoch"])
                run.metrics = runs.read_metrics(run_dir)
            else:  # a fresh run (overwrite): nothing of an earlier run may stay beside the new config
                for name in (runs.METRICS, runs.CHECKPOINT):
                    (run_dir / name).unlink(missing_ok=True)
        fit(run, optimizer, elbo, train_batch, test_batch, ckpt, progress and ctx.is_main, ctx, callbacks)
        trained = _param_values(program)
    remember_params(model, trained)  # evaluation functions use them (models.contract.own_params)
    _restore_params(trained)  # and Pyro's global store holds them, as after Pyro's own SVI
    if figures and run_dir is not None:
        from pyrovae.viz.report import save_run_figures

        save_run_figures(run)
    return run


def _check_program(model: Any, batch: tuple[torch.Tensor, ...], config: TrainConfig) -> Program:
    """Inspect the program on a few examples; check the estimator fits it with a dry run of the loss
    on one batch of the training size (state an estimator keeps per batch position, such as a
    decaying baseline, is then shaped right)."""
    program = inspect_program(model, tuple(t[:4] for t in batch))
    small = tuple(t[:config.batch_size] for t in batch)
    if program.model_only and not enumerates(config.estimator):
        raise PyrovaeError(f"model site(s) {list(program.model_only)} have no guide site: estimator "
                           f"{config.estimator!r} would sample them from the prior; train with "
                           "estimator 'enum' (--estimator enum), which sums them out, or sample them "
                           "in the guide")
    elbo = make_elbo(config.estimator, config.particles, program.max_plate_nesting)
    weighted = not (program.model_only and config.beta == 1 and config.kl_schedule == "constant")
    with pyro.validation_enabled(False), rng_untouched(small):
        beta = torch.full((), 0.5, device=small[0].device)  # any beta != 1, as a schedule would give
        model_fn, guide_fn = model.model, model.guide
        if weighted:
            sites = program.latent
            model_fn, guide_fn = KLWeight(beta, sites)(model_fn), KLWeight(beta, sites)(guide_fn)
        try:
            elbo.differentiable_loss(model_fn, guide_fn, *small)
        except ValueError as exc:
            if "common poutine.scale" not in str(exc):
                raise
            raise PyrovaeError(
                f"beta cannot weight this model: latent sites depend on the enumerated model site(s) "
                f"{list(program.model_only)}, and TraceEnum_ELBO needs one scale for every factor that "
                "depends on an enumerated site; train it with beta=1 and kl_schedule='constant', or "
                "sample those sites in the guide") from None
    return inspect_program(model, small)  # parameters the dry run created are now known too


def _adopt_params(outer: dict[str, tuple[torch.Tensor, Any]], program: Program) -> None:
    store = pyro.get_param_store()
    with torch.no_grad():
        for name in program.params:
            if name in outer and name in store:
                value, constraint = outer[name]
                target = store.get_param(name).unconstrained()
                if value.shape == target.shape:
                    target.copy_(_unconstrain(value, constraint).to(target.device, target.dtype))


def _unconstrain(value: torch.Tensor, constraint: Any) -> torch.Tensor:
    return torch.distributions.transform_to(constraint).inv(value)


def _param_values(program: Program) -> dict[str, tuple[torch.Tensor, Any]]:
    store = pyro.get_param_store()
    state = store.get_state()
    return {name: (store[name].detach(), state["constraints"][name]) for name in program.params
            if name in store}


def _restore_params(values: dict[str, tuple[torch.Tensor, Any]]) -> None:
    """Put the trained param-store entries into the caller's store (``pyro.param`` values live
    there, as with Pyro's own SVI); module parameters are the module's own tensors anyway."""
    store = pyro.get_param_store()
    for name, (value, constraint) in values.items():
        if name in store:
            del store[name]
        store.setdefault(name, value.detach().clone(), constraint)  # not the recorded tensor itself


def make_optimizer(params: Sequence[torch.Tensor], lr: float, capturable: bool = False) -> torch.optim.Adam:
    """Adam over ``params``, fused (one kernel for all of them, CPU or CUDA), and ``capturable``
    (step counts on the device) for CUDA graphs."""
    return torch.optim.Adam(list(params), lr=lr, fused=True, capturable=capturable)


def _restore_optimizer_flags(optimizer: torch.optim.Adam, lr: float, capturable: bool) -> None:
    """After ``load_state_dict``: this run's lr and kernels, whatever the saved run used."""
    for group in optimizer.param_groups:
        group.update(lr=lr, capturable=capturable, fused=True, foreach=None)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:  # fused Adam keeps its step count beside the parameter
                state["step"] = state["step"].to(p.device, torch.float32)


CHECK_EVERY = 100  # steps between host reads of the accumulated loss on a GPU


def fit(run: Run, optimizer: torch.optim.Optimizer, elbo: pyro.infer.ELBO,
        train_batch: tuple[torch.Tensor, ...], test_batch: tuple[torch.Tensor, ...],
        ckpt: dict | None = None, progress: bool = True, ctx: distributed.Context | None = None,
        callbacks: tuple[Callable, ...] = ()) -> None:
    """Run the epochs of ``run``, from scratch or from checkpoint ``ckpt``; fills ``run.metrics``.

    Each step is ``elbo.differentiable_loss`` of model and guide under the KL weight of the
    schedule (:class:`~pyrovae.infer.beta.KLWeight`, a device tensor updated in place), then the
    gradient sum over ranks and the optimizer update; eager or replayed from a CUDA graph
    (:mod:`pyrovae.training.steps`). Losses are summed on the device and read every step on the CPU,
    every :data:`CHECK_EVERY` steps and at each epoch's end on a GPU. A NaN/inf loss or parameter
    raises :class:`TrainingDiverged` before the epoch's checkpoint.
    """
    from tqdm.auto import tqdm

    ctx = ctx or distributed.Context()
    model, config, schedule = run.model, run.config, run.schedule
    device = train_batch[0].device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_sum = distributed.GradientSum(ctx, params)
    beta = torch.ones((), device=device)
    if run.program.model_only and _constant_one(schedule):
        model_fn, guide_fn = model.model, model.guide  # enumerated factors keep one plain scale
    else:  # beta weights the sites the guide samples; enumerated model sites are summed out
        sites = run.program.latent
        model_fn, guide_fn = KLWeight(beta, sites)(model.model), KLWeight(beta, sites)(model.guide)

    def loss_fn(*batch: torch.Tensor) -> torch.Tensor:
        return elbo.differentiable_loss(model_fn, guide_fn, *batch)

    if run.compile == "graph":
        step_fn: Any = steps.GraphStep(loss_fn, optimizer, grad_sum, device=device)
    else:
        step_fn = steps.EagerStep(loss_fn, optimizer, grad_sum)
    store = pyro.get_param_store()
    known = set(store.keys())
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    epoch, step = 0, 0
    if ckpt is not None:
        epoch, step = ckpt["epoch"], ckpt["step"]
        _restore_rng(ckpt, gen, device, config, epoch, ctx)
    elif ctx.rank > 0:
        pyro.set_rng_seed(ctx.rank_seed(config.seed))  # every rank draws its own noise
    n, bs = len(train_batch[0]), config.batch_size
    end = n - n % bs if run.compile == "graph" else n  # a captured step needs full batches
    check_every = 1 if device.type == "cpu" else CHECK_EVERY
    bar = tqdm(total=math.ceil(end / bs) * (config.epochs - epoch), disable=not progress,
               desc="train", unit="step", mininterval=0.5)
    try:
        while epoch < config.epochs:
            epoch += 1
            _train_mode(model, True)
            x_all = binarize(train_batch[0], gen) if config.binarize == "dynamic" else train_batch[0]
            epoch_batch = (x_all, *train_batch[1:])
            perm = torch.randperm(n, generator=gen, device=device)
            total = torch.zeros((), dtype=torch.float64, device=device)
            t0 = time.perf_counter()
            with pyro.validation_enabled(False):  # data were checked once when loaded
                for i in range(0, end, bs):
                    index = ctx.shard(perm[i:i + bs])
                    batch = tuple(t[index] for t in epoch_batch)
                    beta.fill_(schedule(step))
                    total += step_fn(batch)
                    step += 1
                    bar.update()
                    if len(store) != len(known):
                        _check_new_parameters(store, known, step)
                    if step % check_every == 0:
                        if not torch.isfinite(total):
                            raise TrainingDiverged(_diverged_message(run, epoch, step, float(total)))
                        if progress and step % 20 == 0:
                            bar.set_postfix(epoch=epoch, loss=f"{float(total) / min(i + bs, end):.2f}",
                                            refresh=False)
            total = float(total)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            if not math.isfinite(total):
                raise TrainingDiverged(_diverged_message(run, epoch, step, total))
            if not all(torch.isfinite(p).all() for p in params):
                raise TrainingDiverged(_diverged_message(run, epoch, step, "finite, but the "
                                                         "parameters became nan or inf"))
            if not ctx.is_main:  # rank 0 alone evaluates and writes
                if distributed.broadcast_flag(ctx, False):
                    break  # rank 0's callback stopped training
                continue
            row = {"epoch": epoch, "step": step, "seconds": seconds, "train_loss": total / end,
                   "beta": schedule(step - 1)}
            if config.eval_held_out:
                row.update(_held_out(model, test_batch, config))
            row["eval_seconds"] = time.perf_counter() - t0 - seconds
            row.update(compile=run.compile, world_size=ctx.world_size)
            run.metrics.append(row)
            if row.get("test_recon") is not None:
                bar.set_postfix(epoch=epoch, test_recon=f"{row['test_recon']:.2f}")
            if run.run_dir is not None:
                runs.append_metrics(run.run_dir, row)
                runs.save_checkpoint(run.run_dir / runs.CHECKPOINT,
                                     checkpoint_payload(run, optimizer, epoch, step, gen, train_batch))
            stop = any([callback(run, row) is True for callback in callbacks])
            if distributed.broadcast_flag(ctx, stop):
                break  # a callback asked to stop: this epoch's checkpoint is written
    finally:
        bar.close()


def _constant_one(schedule: Schedule) -> bool:
    return to_dict(schedule) == to_dict(parse_schedule("constant", 1.0, 1, 1))


def _train_mode(model: Any, on: bool) -> None:
    if isinstance(model, nn.Module):
        model.train(on)


def _check_new_parameters(store: Any, known: set[str], step: int) -> None:
    """Raise if a parameter appeared after the optimizer was built; Pyro's own bookkeeping entries
    (a decaying baseline's running average, ``__baseline...``) are not trained and are allowed."""
    new = {name for name in set(store.keys()) - known if not name.startswith("__baseline")}
    known.update(store.keys())
    if new:
        raise _lazy_parameters(new, step)


def _lazy_parameters(names: set[str], step: int) -> PyrovaeError:
    return PyrovaeError(
        f"parameter(s) {sorted(names)} were created at step {step}, after the optimizer was built from "
        "the first call of model and guide: create every pyro.param / pyro.module on every call (not "
        "inside a branch taken later), so that it is trained from the start")


def _restore_rng(ckpt: dict, gen: torch.Generator, device: torch.device, config: TrainConfig,
                 epoch: int, ctx: distributed.Context) -> None:
    """Continue the saved random streams: data order (every rank) and noise (rank 0's)."""
    if ctx.rank == 0:
        torch.set_rng_state(ckpt["rng"]["torch"])
    else:
        pyro.set_rng_seed(ctx.rank_seed(config.seed + epoch))
    if ckpt["rng"].get("device", "cpu") == device.type:
        gen.set_state(ckpt["rng"]["data"])
        if device.type == "cuda" and "cuda" in ckpt["rng"] and ctx.rank == 0:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    else:  # generator states do not carry across device types: a new, seeded stream
        gen.manual_seed(config.seed + epoch)
        if ctx.is_main:
            warnings.warn(f"resuming on {device.type} a run trained on {ckpt['rng'].get('device')}: "
                          "the data order and binarization draws continue from a new seeded "
                          "stream, so the run is not bit-for-bit what it would have been",
                          stacklevel=3)


def _held_out(model: Any, test_batch: tuple[torch.Tensor, ...], config: TrainConfig) -> dict[str, Any]:
    _train_mode(model, False)
    terms = elbo_terms(model, test_batch, config.eval_batch_size)
    return {"test_elbo": terms["elbo"], "test_recon": terms["recon"], "test_kl": terms["kl"],
            "active_units": active_units(model, test_batch, batch_size=config.eval_batch_size)}


def _diverged_message(run: Run, epoch: int, step: int, loss: float) -> str:
    where = f"the last good checkpoint ({run.run_dir / runs.CHECKPOINT}, epoch {epoch - 1}) " \
            "is intact" if run.run_dir is not None and epoch > 1 else "no checkpoint was written"
    return (f"training stopped: the loss became {loss} at epoch {epoch}, step {step}; {where}. "
            "Try a smaller --lr, or --likelihood bernoulli/continuous-bernoulli for [0, 1] data")


def checkpoint_payload(run: Run, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                       gen: torch.Generator, train_batch: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """State dicts and plain data only: loads with ``torch.load(weights_only=True)``."""
    rng = {"torch": torch.get_rng_state(), "data": gen.get_state(), "device": gen.device.type}
    if gen.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(gen.device)
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "step": step,
        "config": run.config.to_dict(),
        "model_name": model_name(run.model),
        "spec": getattr(run.model, "spec", None) if not run.config.model.startswith("user:") else None,
        "inputs": {"fields": list(run.inputs),
                   "shapes": [list(t.shape[1:]) for t in train_batch],
                   "dtypes": [str(t.dtype).removeprefix("torch.") for t in train_batch]},
        "state": state_of(run.model, run.program),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "schedule": to_dict(run.schedule),
        "rng": rng,
    }


def _to_cpu(obj: Any) -> Any:
    """The same nested structure with every tensor on the CPU (checkpoints open anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _load_training_checkpoint(run_dir: str | os.PathLike, device: str = "cpu") -> dict:
    ckpt = runs.load_checkpoint(run_dir, map_location=device)
    needed = {"format", "epoch", "step", "config", "optimizer", "schedule", "rng"}
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt not in READABLE_FORMATS or needed - set(ckpt) \
            or ({"state"} if fmt == CHECKPOINT_FORMAT else {"vae", "model"}) - set(ckpt):
        raise PyrovaeError(f"{run_dir} holds a checkpoint that pyrovae's training did not write "
                           f"(expected format {CHECKPOINT_FORMAT}): pass a pyrovae run folder")
    return ckpt


def _checkpoint_state(ckpt: dict) -> dict[str, dict[str, torch.Tensor]]:
    if ckpt["format"] == CHECKPOINT_FORMAT:
        return ckpt["state"]
    return {"module": ckpt["model"], "params": {}}  # format 1: a built-in's state dict


def _checkpoint_spec(ckpt: dict) -> dict[str, Any]:
    if ckpt["format"] == CHECKPOINT_FORMAT:
        return ckpt["spec"]
    spec = dict(ckpt["vae"])  # format 1 kept noise=None for every model
    if spec.get("noise") is None:
        spec.pop("noise", None)
    return spec


def _placeholder_batch(ckpt: dict, device: str) -> tuple[torch.Tensor, ...]:
    """Two zero examples shaped like the run's training inputs (to trace the program once)."""
    inputs = ckpt.get("inputs")
    if inputs is None:  # format 1: images of the spec's shape
        return (torch.zeros((2, *ckpt["vae"]["shape"]), device=device),)
    return tuple(torch.zeros((2, *shape), dtype=getattr(torch, dtype), device=device)
                 for shape, dtype in zip(inputs["shapes"], inputs["dtypes"], strict=True))


def load_run(run_dir: str | os.PathLike, model: Any = None, device: str = "cpu",
             data: bool | Dataset = True) -> Run:
    """Rebuild the trained :class:`Run` in ``run_dir``.

    Built-in models are rebuilt from the checkpoint; a user's model must be passed as ``model`` (a
    freshly built instance of the same class), and gets the trained parameters, ``pyro.param`` ones
    included (into Pyro's param store, as ``pyro.param`` values always live). ``data``: ``True``
    reloads the run's data set by name, a :class:`Dataset` is used as given (in-memory data),
    ``False`` loads none.
    """
    run_dir = Path(run_dir)
    resolve_device(device)
    ckpt = _load_training_checkpoint(run_dir, device)
    config = TrainConfig.from_dict(ckpt["config"])
    config.device = device
    user = config.model.startswith("user:")
    if model is None:
        if user:
            raise PyrovaeError(f"{run_dir} trained a user model ({config.model[5:]}): pass a new instance "
                               f"of it, load_run(run_dir, model=YourModel(...)) (on the command line: "
                               f"--model {config.model[5:].rpartition('.')[0]}:"
                               f"{config.model.rpartition('.')[2]})")
        model = from_spec(_checkpoint_spec(ckpt))
    elif isinstance(model, str):
        raise PyrovaeError(f"load_run rebuilds built-in models itself: pass model=None, not {model!r}")
    elif not user and model_name(model) != config.model:
        raise PyrovaeError(f"{run_dir} trained the built-in {config.model!r}; leave model out to rebuild it")
    if isinstance(model, nn.Module):
        model.to(resolve_device(device))
    dataset = None
    if data is not False:
        dataset = prepare_data(config, data if isinstance(data, Dataset) else None).to(device)
    fields = tuple(ckpt.get("inputs", {}).get("fields", ["x"]))
    batch = dataset.inputs("train", fields) if dataset is not None else _placeholder_batch(ckpt, device)
    forget_params(model)
    with pyro.get_param_store().scope():  # the object's own initial values, not stale global ones
        program = inspect_program(model, tuple(t[:3] for t in batch))
        load_state(model, program, _checkpoint_state(ckpt))
        loaded = _param_values(program)
    remember_params(model, loaded)
    _restore_params(loaded)
    remember_inputs(model, batch)
    _train_mode(model, False)
    schedule = from_dict(ckpt["schedule"])
    return Run(model, dataset, config, runs.read_metrics(run_dir), run_dir, schedule,
               program=program, inputs=fields)
