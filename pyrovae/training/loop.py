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
import shutil
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from pyrovae import checks, memory, runs
from pyrovae.data.datasets import Dataset, binarize, check_binarize_mode, load_dataset
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.generate import reconstruct, remember_inputs, sample
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
from pyrovae.models.registry import build_model, from_spec, model_name, spec_name
from pyrovae.tracking import Trackers, build_trackers
from pyrovae.training import distributed, steps
from pyrovae.training.callbacks import BestCheckpoint, EarlyStopping
from pyrovae.training.config import BUILTIN_OPTIONS, TrainConfig, auto_device, resolve
from pyrovae.training.lr_schedules import build_lr_schedule

EVAL_SEED = 1234  # fixed draw for binarizing held-out data, so runs compare on the same images


RESUMABLE = ("epochs", "device", "lr", "data_dir", "compile", "patience")  # what a resumed run may change
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
    lr_scheduler: Any = None  # torch's scheduler of the run's learning-rate schedule, if any

    @property
    def vae(self) -> Any:
        """The trained model (the name earlier versions used)."""
        return self.model


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)`` (``"auto"``: CUDA when available), with a clear error when CUDA is
    asked for but absent."""
    name = auto_device(name)
    if name != "cpu" and not (name == "cuda" or re.fullmatch(r"cuda:\d+", name)):
        raise PyrovaeError(f"{checks.label('device')} must be cpu, cuda, cuda:N or auto, got {name!r}")
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
    if config.val_fraction is not None:  # held-out metrics, best.pt and early stopping on validation
        data = data.validation(config.val_fraction, seed=EVAL_SEED)
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
    tracking: str | Sequence[str] | None = None,
    track_every: int = 50,
    **overrides: Any,
) -> Run:
    """Train a model and return the :class:`Run`; keyword ``overrides`` set config fields.

    ``model``: a built-in name (``"vae"``, ``"ae"``, ``"dae"``; default the config's) or any object
    with Pyro ``model(*batch)`` and ``guide(*batch)`` methods (see :mod:`pyrovae.models.contract`),
    trained in place. ``inputs``: the data fields each batch holds (default ``model.inputs`` or
    ``("x",)``; ``("x", "y")`` passes labels too). ``data``: a :class:`Dataset` to train on instead of
    the config's ``dataset``. ``callbacks``: functions ``f(run, row)`` called after every epoch with
    its metrics row; one that returns ``True`` stops training there. ``tracking``: experiment
    trackers (``"tensorboard,mlflow,jsonl"``, see :mod:`pyrovae.tracking`) writing into ``run_dir``,
    per-step rows every ``track_every`` steps, each epoch's row and sample/reconstruction grids.

    With ``run_dir``, writes ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` (each epoch) and
    ``figures/``. ``resume=True`` continues the run in ``run_dir`` from its checkpoint up to
    ``epochs`` (only ``epochs``, ``device``, ``lr``, ``data_dir`` and ``compile`` may be overridden
    then; a user model must be passed again). ``run_dir`` must be new, empty or a pyrovae run; one
    that holds a checkpoint is only reused with ``resume=True`` or ``overwrite=True``, and the run it
    holds is replaced only once the new run has written its first checkpoint. One process at a time
    writes a run folder: another one that asks meanwhile fails at once.

    Under ``torchrun`` (or in a process group the caller made) every rank trains on its shard of each
    global batch of ``batch_size`` and rank 0 alone writes ``run_dir`` and evaluates; see
    :mod:`pyrovae.training.distributed`.
    """
    user_model = model if model is not None and not isinstance(model, str) else None
    if isinstance(model, str):
        overrides["model"] = model
    if resume and run_dir is None:
        raise PyrovaeError("resume=True needs the run folder: pass run_dir (--resume RUN_DIR)")
    checks.whole(track_every, checks.label("track_every", "--track-every"))
    trackers = build_trackers(tracking, run_dir, every=track_every)  # bad names fail before writing
    with _writing(run_dir, resume):  # one process at a time writes a run folder
        ckpt, replace = None, False
        if resume:
            ckpt = _load_training_checkpoint(run_dir)
            config = _resumed_config(ckpt, config, overrides, data, user_model, run_dir)
        else:
            replace = run_dir is not None and _replaces(run_dir, overwrite)
            config = _new_config(config, overrides, data, user_model)
        config = resolve(config)
        ctx = distributed.setup(config.device)
        failed = True
        try:
            result = _train(config, ctx, ckpt, run_dir, data, user_model, inputs, progress, figures,
                            tuple(callbacks), replace, trackers)
            failed = False
            return result
        finally:
            distributed.teardown(ctx, failed)


def _main_process() -> bool:
    """Rank 0 of a data-parallel run (read before the process group is joined), or the only one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def _writing(run_dir: str | os.PathLike | None, resume: bool) -> Iterator[None]:
    """Hold ``run_dir``'s lock (rank 0 alone writes); a folder made here and left without a run
    (the run failed before writing anything) is removed again."""
    path = None if run_dir is None else Path(run_dir)
    if path is None or not _main_process() or (resume and not path.is_dir()):
        yield  # a missing folder to resume is reported by the checkpoint loader
        return
    made = not path.exists()
    runs.ensure_dir(path)
    with runs.lock(path):
        runs.remove_leftovers(path)
        try:
            yield
        finally:
            if made and runs.folder_state(path) == "new":
                shutil.rmtree(path, ignore_errors=True)


def _replaces(run_dir: str | os.PathLike, overwrite: bool) -> bool:
    """Whether a new run in ``run_dir`` replaces an earlier one; refuses folders of other files."""
    state = runs.folder_state(run_dir)
    if state == "foreign":
        names = sorted(p.name for p in Path(run_dir).iterdir())
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise PyrovaeError(f"{run_dir} holds files ({shown}) but no pyrovae run: training would "
                           f"replace them; choose an empty or new folder for {checks.label('run_dir')} "
                           f"({checks.label('overwrite')} only replaces a pyrovae run)")
    if state == "trained" and not overwrite:
        raise PyrovaeError(f"{run_dir} already holds a trained run: resume it with resume=True "
                           "(--resume), pass overwrite=True (--overwrite) to replace it, or choose "
                           "another run_dir (--out)")
    return state != "new"


def _new_config(config: TrainConfig | dict[str, Any] | None, overrides: dict[str, Any],
                data: Dataset | None, user_model: Any) -> TrainConfig:
    """The config of a new run: ``config``, then ``overrides``, then what ``data`` and a user's
    model imply."""
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
        if not overrides["model"].startswith("user:"):  # a built-in instance: record its own sizes
            spec = user_model.spec
            overrides.update({k: spec[k] for k in BUILTIN_OPTIONS if k in spec})
        if overrides.get("binarize", given.get("binarize")) is None:
            overrides["binarize"] = "none"  # the user's likelihood decides what data it takes
    base = config.to_dict() if isinstance(config, TrainConfig) else TrainConfig().to_dict()
    return TrainConfig.from_dict({**base, **given, **overrides})


def _resumed_config(ckpt: dict, config: TrainConfig | dict[str, Any] | None,
                    overrides: dict[str, Any], data: Dataset | None, user_model: Any,
                    run_dir: str | os.PathLike) -> TrainConfig:
    """The saved config with the options a resume may change; any other option that differs
    from the recorded one is an error naming both."""
    saved = dict(ckpt["config"])
    if isinstance(config, TrainConfig):  # the fields set away from their defaults
        default = TrainConfig().to_dict()
        asked = {k: v for k, v in config.to_dict().items() if v != default[k]}
    else:
        asked = dict(config or {})
    asked.update(overrides)
    if user_model is not None:
        asked.pop("model", None)
    if data is not None and asked.get("dataset") is None:
        asked["dataset"] = data.name  # data of another name is another data set
    bad = sorted(k for k, v in asked.items() if k not in RESUMABLE and v is not None
                 and v != saved.get(k))
    if bad:
        recorded = ", ".join(f"{checks.label(k)} {saved.get(k)!r} (asked for {asked[k]!r})" for k in bad)
        raise PyrovaeError(f"cannot change {bad} when resuming: the run in {run_dir} was trained with "
                           f"{recorded}; only {', '.join(RESUMABLE)} may change (train a new run to "
                           "change the others)")
    saved.update({k: v for k, v in asked.items() if v is not None})
    config = TrainConfig.from_dict(saved)
    if config.model.startswith("user:") and user_model is None:
        raise PyrovaeError(f"{run_dir} trained a user model ({config.model[5:]}): resume it with "
                           "train(model=YourModel(...), run_dir=..., resume=True)")
    return config


def _train(config: TrainConfig, ctx: distributed.Context, ckpt: dict | None,
           run_dir: str | os.PathLike | None, data: Dataset | None, user_model: Any,
           inputs: Sequence[str] | None, progress: bool, figures: bool,
           callbacks: tuple[Callable, ...], replace: bool = False,
           trackers: Trackers | None = None) -> Run:
    source = run_dir  # where a resumed checkpoint came from (every rank reads it)
    device = resolve_device(distributed.device_name(ctx, config.device))
    data = prepare_data(config, data).to(device)
    if user_model is None:  # the built-in's size is known: refuse what cannot fit, before allocating
        memory.check_memory(config, data.shape, len(data.train_x))
    mode, why = steps.choose(config.compile, device, config.estimator)
    if mode == "graph" and len(data.train_x) < config.batch_size:
        raise PyrovaeError(f"--compile graph trains on full batches only, and the {len(data.train_x)} "
                           f"training examples do not fill one --batch-size {config.batch_size}: use a "
                           "smaller --batch-size or --compile eager")
    if mode == "graph" and config.lr_schedule != "constant":
        raise PyrovaeError("a CUDA graph bakes the learning rate into the captured step: use "
                           f"{checks.label('lr_schedule', '--lr-schedule')} constant or --compile eager")
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
        trackers = None
    trackers = trackers if trackers is not None else Trackers()
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
        run.lr_scheduler = build_lr_schedule(config.lr_schedule, optimizer, config.epochs)
        n = len(train_batch[0])
        steps_per_epoch = n // config.batch_size if mode == "graph" else math.ceil(n / config.batch_size)
        if ckpt is not None:
            _resume_state(ckpt, source, model, program, optimizer, config.lr, capturable)
            _resume_lr_schedule(ckpt, source, run.lr_scheduler, optimizer,
                                same_lr=ckpt["config"].get("lr") == config.lr)
            run.schedule = _checkpoint_schedule(ckpt, source)
            _warn_schedule_length(run.schedule, ckpt["config"].get("epochs"), config.epochs)
        else:
            run.schedule = parse_schedule(config.kl_schedule, config.beta,
                                          steps_per_epoch * config.epochs, steps_per_epoch)
        on_checkpoint = None
        if run_dir is not None:  # the program and the estimator passed their checks: write
            run_dir = runs.make_run_dir(run_dir, config.dataset)
            run.run_dir, on_checkpoint = _open_run_folder(run, run_dir, ckpt, replace)
        if trackers and run_dir is not None:
            trackers.start(run_dir, config.to_dict(), step=ckpt["step"] if ckpt is not None else 0)
        try:
            with trackers:
                fit(run, optimizer, elbo, train_batch, test_batch, ckpt, progress and ctx.is_main, ctx,
                    _selection(config, run_dir) + callbacks, on_checkpoint, trackers)
        finally:
            if run.run_dir is not None and runs.is_staging(run.run_dir):  # no checkpoint: discard it
                shutil.rmtree(run.run_dir, ignore_errors=True)
                run.run_dir = run_dir
        trained = _param_values(program)
    remember_params(model, trained)  # evaluation functions use them (models.contract.own_params)
    _restore_params(trained)  # and Pyro's global store holds them, as after Pyro's own SVI
    if figures and run.run_dir is not None:
        _save_figures(run)
    return run


def _selection(config: TrainConfig, run_dir: Any) -> tuple[Callable, ...]:
    """The callbacks a validation split asks for: ``best.pt`` (with a run folder) and early stopping
    after ``patience`` epochs without a better validation ELBO."""
    out: list[Callable] = []
    if config.val_fraction is not None and run_dir is not None:
        out.append(BestCheckpoint())
    if config.patience is not None:
        out.append(EarlyStopping(config.patience))
    return tuple(out)


def _resume_lr_schedule(ckpt: dict, run_dir: Any, scheduler: Any, optimizer: torch.optim.Optimizer,
                        same_lr: bool) -> None:
    """The scheduler where the checkpoint left it, and the optimizer at its scheduled learning rate
    (a resume with a new ``lr`` starts the rest of the schedule from that one)."""
    saved = ckpt.get("lr_scheduler")
    if scheduler is None:
        return
    if not isinstance(saved, dict):
        raise _damaged(_checkpoint_path(run_dir), "it has no 'lr_scheduler' state for the run's "
                       "learning-rate schedule")
    try:
        scheduler.load_state_dict(saved)
        last = scheduler.get_last_lr()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _damaged(_checkpoint_path(run_dir), f"its 'lr_scheduler' does not fit ({exc})") from None
    if same_lr:
        for group, lr in zip(optimizer.param_groups, last, strict=False):
            group["lr"] = lr


def _open_run_folder(run: Run, run_dir: Path, ckpt: dict | None,
                     replace: bool) -> tuple[Path, Callable[[], None]]:
    """The folder training writes into, and what to do once it has written a checkpoint.

    ``config.json`` always describes the checkpoint beside it: a resumed run (whose ``lr`` or
    ``epochs`` may be new) rewrites it after its first checkpoint; a run that replaces another
    writes into a staging folder, swapped in after its first checkpoint, so a run that fails
    before then leaves the earlier one as it was.
    """
    write_dir = run_dir
    if ckpt is not None:
        runs.truncate_metrics(run_dir, "epoch", ckpt["epoch"])
        run.metrics = runs.read_metrics(run_dir)
    else:
        write_dir = runs.stage(run_dir) if replace else run_dir
        runs.write_config(write_dir, run.config.to_dict())
    done = False

    def on_checkpoint() -> None:
        nonlocal done
        if done:
            return
        done = True
        if ckpt is not None:
            runs.write_config(run_dir, run.config.to_dict())
        elif write_dir != run_dir:
            runs.commit(run_dir, write_dir)
            run.run_dir = run_dir

    return write_dir, on_checkpoint


def _save_figures(run: Run) -> None:
    """The run's figures; a failure (full disk, a plotting error) is a warning, never a lost run."""
    from pyrovae.viz.report import save_run_figures

    try:
        save_run_figures(run)
    except Exception as exc:  # any plotting error: the trained run is saved, figures are extras
        first = str(exc).splitlines()[0] if str(exc) else "no message"
        fix = "free disk space, then draw" if isinstance(exc, OSError) else "draw"
        warnings.warn(f"the figures of {run.run_dir} could not be written ({type(exc).__name__}: "
                      f"{first}); the run and its checkpoint are saved: {fix} them with "
                      "pyrovae.viz.report.save_run_figures(load_run(run_dir))", stacklevel=4)


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
        callbacks: tuple[Callable, ...] = (), on_checkpoint: Callable[[], None] | None = None,
        trackers: Trackers | None = None) -> None:
    """Run the epochs of ``run``, from scratch or from checkpoint ``ckpt``; fills ``run.metrics``.

    Each step is ``elbo.differentiable_loss`` of model and guide under the KL weight of the
    schedule (:class:`~pyrovae.infer.beta.KLWeight`, a device tensor updated in place), then the
    gradient sum over ranks and the optimizer update; eager or replayed from a CUDA graph
    (:mod:`pyrovae.training.steps`). Losses are summed on the device and read every step on the CPU,
    every :data:`CHECK_EVERY` steps and at each epoch's end on a GPU. A NaN/inf loss or parameter
    raises :class:`TrainingDiverged` before the epoch's checkpoint. ``on_checkpoint`` is called
    after each checkpoint is written; ``trackers`` get per-step rows when due, each epoch's row
    and image grids (after the checkpoint, so a resume never repeats what they saw).
    """
    from tqdm.auto import tqdm

    trackers = trackers if trackers is not None else Trackers()

    ctx = ctx or distributed.Context()
    model, config, schedule = run.model, run.config, run.schedule
    device = train_batch[0].device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_sum = distributed.GradientSum(ctx, params, clip_norm=config.clip_norm)
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
                    loss = step_fn(batch)
                    total += loss
                    step += 1
                    bar.update()
                    if trackers.due(step):  # a host read only on the steps that are logged
                        trackers.log_step(step, {"train_loss": float(loss) / len(index),
                                                 "beta": schedule(step - 1)}, epoch=epoch)
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
            lr_now = optimizer.param_groups[0]["lr"]
            if run.lr_scheduler is not None:
                run.lr_scheduler.step()  # per epoch; every rank steps alike
            if not ctx.is_main:  # rank 0 alone evaluates and writes
                if distributed.broadcast_flag(ctx, False):
                    break  # rank 0's callback stopped training
                continue
            row = {"epoch": epoch, "step": step, "seconds": seconds, "train_loss": total / end,
                   "beta": schedule(step - 1), "lr": lr_now}
            if config.eval_held_out:
                row.update(_held_out(model, test_batch, config))
            row["eval_seconds"] = time.perf_counter() - t0 - seconds
            row.update(compile=run.compile, world_size=ctx.world_size)
            run.metrics.append(row)
            if row.get("test_recon") is not None:
                bar.set_postfix(epoch=epoch, test_recon=f"{row['test_recon']:.2f}")
            if run.run_dir is not None:
                payload = checkpoint_payload(run, optimizer, epoch, step, gen, train_batch)
                bad = _non_finite(payload["state"])
                if bad is not None:  # such a checkpoint is never written
                    raise TrainingDiverged(_diverged_message(run, epoch, step, "finite, but the "
                                                             f"saved state {bad!r} became nan or inf"))
                runs.append_metrics(run.run_dir, row)
                runs.save_checkpoint(run.run_dir / runs.CHECKPOINT, payload)
                if on_checkpoint is not None:
                    on_checkpoint()
            if trackers:
                trackers.log_epoch(epoch, step, row)
                _track_images(run, test_batch, step, trackers)
            stop = any([callback(run, row) is True for callback in callbacks])
            if distributed.broadcast_flag(ctx, stop):
                break  # a callback asked to stop: this epoch's checkpoint is written
    finally:
        bar.close()


def _track_images(run: Run, test_batch: tuple[torch.Tensor, ...], step: int, trackers: Trackers) -> None:
    """Sample and reconstruction grids for the trackers, for image models with one observed site;
    drawn on a fork of the random state, so tracking does not change the run."""
    x = test_batch[0]
    if len(run.program.observed) != 1 or x.dim() != 4 or x.shape[1] not in (1, 3):
        return
    shown = tuple(t[:16] for t in test_batch)
    with rng_untouched(test_batch):
        trackers.log_images(step, "samples", sample(run.model, 64, seed=0, like=shown))
        trackers.log_images(step, "reconstructions", torch.cat([shown[0], reconstruct(run.model, shown)]))
    _train_mode(run.model, True)


def _warn_schedule_length(schedule: Schedule, recorded: Any, epochs: int) -> None:
    """A resume to another number of epochs keeps the KL schedule resolved when the run started
    (its steps count from the first epoch; past its end beta stays at its target): say so, since an
    annealed run resumed to 3 epochs is then not a 3-epoch run."""
    if to_dict(schedule)["name"] != "constant" and recorded is not None and recorded != epochs:
        warnings.warn(f"resuming to {epochs} epochs a run that started with {recorded}: its KL "
                      f"schedule keeps the length it was resolved with ({to_dict(schedule)}); past "
                      "its end beta stays at its target. Train a new run to anneal over "
                      f"{epochs} epochs.", UserWarning, stacklevel=4)


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


def _diverged_message(run: Run, epoch: int, step: int, loss: float | str) -> str:
    if run.run_dir is not None and runs.is_staging(run.run_dir):
        where = f"the run already in {run.run_dir.parent} is left as it was"
    elif run.run_dir is not None and epoch > 1:
        where = f"the last good checkpoint ({run.run_dir / runs.CHECKPOINT}, epoch {epoch - 1}) is intact"
    else:
        where = "no checkpoint was written"
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
        **({"lr_scheduler": run.lr_scheduler.state_dict()} if run.lr_scheduler is not None else {}),
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


DAMAGED = "the checkpoint is damaged or from another model: retrain or restore it"


def _damaged(path: str | os.PathLike, what: str) -> PyrovaeError:
    return PyrovaeError(f"{path}: {what}; {DAMAGED}")


def _load_training_checkpoint(run_dir: str | os.PathLike, device: str = "cpu") -> dict:
    ckpt = runs.load_checkpoint(run_dir, map_location=device)
    needed = {"format", "epoch", "step", "config", "optimizer", "schedule", "rng"}
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt not in READABLE_FORMATS:
        raise PyrovaeError(f"{run_dir} holds a checkpoint that pyrovae's training did not write "
                           f"(expected format {CHECKPOINT_FORMAT}): pass a pyrovae run folder")
    path = _checkpoint_path(run_dir)
    needed |= {"state", "spec", "inputs"} if fmt == CHECKPOINT_FORMAT else {"vae", "model"}
    missing = sorted(needed - set(ckpt))
    if missing:
        raise _damaged(path, f"key {missing[0]!r} is missing")
    _check_checkpoint(ckpt, path)
    return ckpt


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _tensors(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in value.items())


def _bytes(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _check_checkpoint(ckpt: dict, path: Path) -> None:
    """Every entry training and loading use, with the type they need (one error per problem)."""
    for key in ("epoch", "step"):
        if not _is_int(ckpt[key]):
            raise _damaged(path, f"{key!r} is {ckpt[key]!r}, not a whole number >= 0")
    _check_config(ckpt["config"], path)
    if ckpt["format"] == CHECKPOINT_FORMAT:
        state, spec = ckpt["state"], ckpt["spec"]
        if not isinstance(state, dict) or not _tensors(state.get("module")) \
                or not _tensors(state.get("params")):
            raise _damaged(path, "'state' must hold the tensors 'module' and 'params'")
        if not (spec is None or isinstance(spec, dict)) or \
                (spec is None and not ckpt["config"].get("model", "vae").startswith("user:")):
            raise _damaged(path, f"'spec' is {type(spec).__name__}, not the built-in model's options")
        config = ckpt["config"]
        for key in sorted(set(spec or {}) & set(config) - {"model"}):
            if config[key] is not None and spec[key] != config[key]:  # None: the model's default
                raise _damaged(path, f"its model spec has {key}={spec[key]!r} and its config "
                               f"{key}={config[key]!r}")
        _check_inputs(ckpt["inputs"], path)
        tensors = {**state["module"], **state["params"]}
    else:
        if not isinstance(ckpt["vae"], dict) or not _tensors(ckpt["model"]):
            raise _damaged(path, "'vae' and 'model' must be the model's options and weights")
        tensors = ckpt["model"]
    bad = _non_finite({"module": tensors})
    if bad is not None:
        raise PyrovaeError(f"{path}: parameter {bad!r} is nan or inf, so the model it holds cannot "
                           "be used; retrain or restore the checkpoint")
    opt = ckpt["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) \
            or not isinstance(opt.get("param_groups"), list):
        raise _damaged(path, "'optimizer' is not an optimizer state dict")
    if not isinstance(ckpt["schedule"], dict) or not isinstance(ckpt["schedule"].get("name"), str):
        raise _damaged(path, "'schedule' is not a KL schedule")
    rng = ckpt["rng"]
    if not isinstance(rng, dict) or not _bytes(rng.get("torch")) or not _bytes(rng.get("data")) \
            or not isinstance(rng.get("device", "cpu"), str) \
            or ("cuda" in rng and not _bytes(rng["cuda"])):
        raise _damaged(path, "'rng' must hold random generator states (uint8 tensors)")
    size = torch.get_rng_state().numel()
    if len(rng["torch"]) != size or (rng.get("device", "cpu") == "cpu" and len(rng["data"]) != size):
        raise _damaged(path, f"'rng' holds generator states of the wrong size (a CPU one has {size} bytes)")


_CONFIG_TYPES = typing.get_type_hints(TrainConfig)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` names (the subset TrainConfig uses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return _is_int(value, minimum=-(2**63))
    return isinstance(value, hint)


def _check_config(config: Any, path: Path) -> None:
    if not isinstance(config, dict):
        raise _damaged(path, f"'config' is {type(config).__name__}, not a dict")
    for key, value in config.items():
        if key not in _CONFIG_TYPES:
            raise _damaged(path, f"config key {key!r} is not a training option")
        if not _fits(value, _CONFIG_TYPES[key]):
            raise _damaged(path, f"config {key!r} is {value!r}, not {_CONFIG_TYPES[key]}")
    try:
        resolve(TrainConfig.from_dict(config))
    except PyrovaeError as exc:
        raise _damaged(path, f"its config is invalid ({exc})") from None


def _check_inputs(inputs: Any, path: Path) -> None:
    ok = isinstance(inputs, dict) and all(isinstance(inputs.get(k), list)
                                          for k in ("fields", "shapes", "dtypes"))
    ok = ok and len(inputs["fields"]) == len(inputs["shapes"]) == len(inputs["dtypes"]) >= 1
    ok = ok and all(isinstance(f, str) for f in inputs["fields"])
    ok = ok and all(isinstance(s, list) and all(_is_int(d) for d in s) for s in inputs["shapes"])
    ok = ok and all(isinstance(getattr(torch, str(d), None), torch.dtype) for d in inputs["dtypes"])
    if not ok:
        raise _damaged(path, "'inputs' must list the fields, shapes and dtypes of the training data")


def _non_finite(state: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """The name of the first floating tensor of ``state`` holding nan or inf, if any."""
    for part in state.values():
        for name, value in part.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                return name
    return None


def _check_state_fits(model: Any, state: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """The checkpoint's module weights against the rebuilt model's: the same names and shapes."""
    if not isinstance(model, nn.Module) or not state.get("module"):
        return
    own, saved = model.state_dict(), state["module"]
    problem = None
    if sorted(set(own) - set(saved)):
        problem = f"key {sorted(set(own) - set(saved))[0]!r} is missing"
    elif sorted(set(saved) - set(own)):
        problem = f"key {sorted(set(saved) - set(own))[0]!r} is not in the model"
    else:
        for key, value in saved.items():
            if value.shape != own[key].shape:
                problem = (f"key {key!r} has shape {tuple(value.shape)}, the model's "
                           f"{tuple(own[key].shape)}")
                break
    if problem is not None:
        raise PyrovaeError(f"{path}: the weights do not fit this {type(model).__name__} ({problem}); "
                           f"{DAMAGED} (a model of your own: build it with the arguments it was "
                           "trained with)")


def _resume_state(ckpt: dict, run_dir: str | os.PathLike, model: Any, program: Program,
                  optimizer: torch.optim.Adam, lr: float, capturable: bool) -> None:
    """Load the checkpoint's weights and optimizer state into a freshly built run."""
    path = _checkpoint_path(run_dir)
    state = _checkpoint_state(ckpt)
    _check_state_fits(model, state, path)
    load_state(model, program, state)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise _damaged(path, f"its 'optimizer' does not fit the model ({exc})") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and (not isinstance(value, torch.Tensor) or value.shape != p.shape):
                    raise _damaged(path, f"its optimizer state {key!r} does not fit a parameter of "
                                   f"shape {tuple(p.shape)}")
    _restore_optimizer_flags(optimizer, lr, capturable=capturable)


def _checkpoint_schedule(ckpt: dict, run_dir: str | os.PathLike) -> Schedule:
    try:
        return from_dict(ckpt["schedule"])
    except (PyrovaeError, TypeError, ValueError) as exc:
        raise _damaged(_checkpoint_path(run_dir), f"its 'schedule' is not a KL schedule ({exc})") from None


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


def _checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / runs.CHECKPOINT if Path(run_dir).is_dir() else Path(run_dir)


def _rebuild(ckpt: dict, run_dir: str | os.PathLike) -> Any:
    """The built-in model the checkpoint's spec describes."""
    try:
        return from_spec(_checkpoint_spec(ckpt))
    except PyrovaeError as exc:
        raise _damaged(_checkpoint_path(run_dir), f"its model spec is invalid ({exc})") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise _damaged(_checkpoint_path(run_dir), f"its model spec cannot build a model "
                       f"({type(exc).__name__}: {exc})") from None


def _placeholder_batch(ckpt: dict, device: str) -> tuple[torch.Tensor, ...]:
    """Two zero examples shaped like the run's training inputs (to trace the program once)."""
    inputs = ckpt.get("inputs")
    if inputs is None:  # format 1: images of the spec's shape
        return (torch.zeros((2, *ckpt["vae"]["shape"]), device=device),)
    return tuple(torch.zeros((2, *shape), dtype=getattr(torch, dtype), device=device)
                 for shape, dtype in zip(inputs["shapes"], inputs["dtypes"], strict=True))


def load_run(run_dir: str | os.PathLike, model: Any = None, device: str = "cpu",
             data: bool | Dataset = True, checkpoint: str = runs.CHECKPOINT) -> Run:
    """Rebuild the trained :class:`Run` in ``run_dir``.

    Built-in models are rebuilt from the checkpoint; a user's model must be passed as ``model`` (a
    freshly built instance of the same class), and gets the trained parameters, ``pyro.param`` ones
    included (into Pyro's param store, as ``pyro.param`` values always live). ``data``: ``True``
    reloads the run's data set by name, a :class:`Dataset` is used as given (in-memory data),
    ``False`` loads none. ``checkpoint``: the file in ``run_dir`` to load (``"best.pt"``: the
    best epoch kept by :class:`~pyrovae.training.callbacks.BestCheckpoint`); the run's metric rows
    are those up to its epoch.
    """
    run_dir = Path(run_dir)
    device = str(resolve_device(device))
    if Path(checkpoint).name != checkpoint:
        raise PyrovaeError(f"checkpoint must be a file name inside the run folder, got {checkpoint!r}")
    path = run_dir / checkpoint
    ckpt = _load_training_checkpoint(path, device)
    config = TrainConfig.from_dict(ckpt["config"])
    config.device = device
    user = config.model.startswith("user:")
    if model is None:
        if user:
            raise PyrovaeError(f"{run_dir} trained a user model ({config.model[5:]}): pass a new instance "
                               f"of it, load_run(run_dir, model=YourModel(...)) (on the command line: "
                               f"--model {config.model[5:].rpartition('.')[0]}:"
                               f"{config.model.rpartition('.')[2]})")
        model = _rebuild(ckpt, run_dir)
    elif isinstance(model, str):
        raise PyrovaeError(f"load_run rebuilds built-in models itself: pass model=None, not {model!r}")
    elif not user and model_name(model) != spec_name(_checkpoint_spec(ckpt)):
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
        _check_state_fits(model, _checkpoint_state(ckpt), path)
        load_state(model, program, _checkpoint_state(ckpt))
        loaded = _param_values(program)
    remember_params(model, loaded)
    _restore_params(loaded)
    remember_inputs(model, batch)
    _train_mode(model, False)
    schedule = _checkpoint_schedule(ckpt, path)
    rows = [r for r in runs.read_metrics(run_dir) if r.get("epoch", 0) <= ckpt["epoch"]]
    return Run(model, dataset, config, rows, run_dir, schedule, program=program, inputs=fields)
