"""The one training loop: SVI on a Pyro ELBO, in-memory batches, metrics and checkpoints per epoch.

Read top to bottom: :func:`train` resolves the config, loads data, builds (or restores) the VAE,
optimizer and KL schedule, then :func:`fit` runs the epochs. The CLI, the Python API and the
notebooks all call :func:`train`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from . import distributed, runs, steps
from .config import TrainConfig, resolve
from .data import Dataset, binarize, check_binarize_mode, load_dataset
from .errors import PyrovaeError
from .evaluation import active_units, elbo_terms
from .objectives import make_elbo
from .schedules import Schedule, from_dict, parse_schedule, to_dict
from .static_elbo import StaticELBO
from .vae import VAE

EVAL_SEED = 1234  # fixed draw for binarizing held-out data, so runs compare on the same images


RESUMABLE = ("epochs", "device", "lr", "data_dir", "compile")  # what a resumed run may change
CHECKPOINT_FORMAT = "pyrovae-checkpoint-1"


class TrainingDiverged(PyrovaeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


@dataclass
class Run:
    """A trained (or training) VAE with its data, config, metric rows and run folder."""

    vae: VAE
    data: Dataset
    config: TrainConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    schedule: Schedule | None = None
    compile: str = "eager"  # how the step ran: eager or graph
    world_size: int = 1  # data-parallel processes


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with a clear error when CUDA is asked for but absent."""
    if name != "cpu" and not (name == "cuda" or re.fullmatch(r"cuda:\d+", name)):
        raise PyrovaeError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
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


def build_vae(config: TrainConfig, shape: tuple[int, ...]) -> VAE:
    """The VAE a resolved config describes, for images of ``shape = (C, H, W)``."""
    return VAE(shape, config.z_dim, config.hidden, config.net, config.likelihood, config.obs_scale,
               config.model, config.noise)


def train(
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    data: Dataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
    **overrides: Any,
) -> Run:
    """Train a VAE and return the :class:`Run`; keyword ``overrides`` set config fields.

    With ``run_dir``, writes ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` (each epoch) and
    ``figures/``. ``resume=True`` continues the run in ``run_dir`` from its checkpoint up to
    ``epochs`` (only ``epochs``, ``device``, ``lr``, ``data_dir`` and ``compile`` may be
    overridden then). A folder that already holds a checkpoint is only reused with ``resume`` or
    ``overwrite=True``. With ``data`` and no ``dataset``, the data set's name is recorded as the
    run's ``dataset``.

    Under ``torchrun`` (or in a process group the caller made) every rank trains on its shard of
    each global batch of ``batch_size`` and rank 0 alone writes ``run_dir`` and evaluates; see
    :mod:`pyrovae.distributed`.
    """
    ckpt = None
    if resume:
        if run_dir is None:
            raise PyrovaeError("resume needs the run folder: pass --resume RUN_DIR")
        ckpt = _load_training_checkpoint(run_dir)
        saved = dict(ckpt["config"])
        bad = sorted(k for k, v in overrides.items() if k not in RESUMABLE
                     and v is not None and v != saved.get(k))
        if bad:
            raise PyrovaeError(f"cannot change {bad} when resuming: only {', '.join(RESUMABLE)}")
        saved.update({k: v for k, v in overrides.items() if v is not None})
        config = TrainConfig.from_dict(saved)
    else:
        if run_dir is not None and not overwrite and (Path(run_dir) / runs.CHECKPOINT).exists():
            raise PyrovaeError(f"{run_dir} already holds a trained run: resume it with --resume "
                               f"{run_dir}, pass --overwrite to replace it, or choose another --out")
        given = dict(config) if isinstance(config, dict) else {}
        if data is not None and "dataset" not in given and "dataset" not in overrides \
                and not isinstance(config, TrainConfig):
            overrides["dataset"] = data.name  # record what was trained on, not the default
        base = config.to_dict() if isinstance(config, TrainConfig) else TrainConfig().to_dict()
        config = TrainConfig.from_dict({**base, **given, **overrides})
    config = resolve(config)
    ctx = distributed.setup(config.device)
    try:
        return _train(config, ctx, ckpt, run_dir, data, progress, figures)
    finally:
        distributed.teardown(ctx)


def _train(config: TrainConfig, ctx: distributed.Context, ckpt: dict | None,
           run_dir: str | os.PathLike | None, data: Dataset | None, progress: bool,
           figures: bool) -> Run:
    device = resolve_device(distributed.device_name(ctx, config.device))
    data = prepare_data(config, data).to(device)
    mode, why = steps.choose(config.compile, device, config.estimator, config.particles)
    if mode == "graph" and len(data.train_x) < config.batch_size:
        raise PyrovaeError(f"--compile graph trains on full batches only, and the {len(data.train_x)} "
                           f"training examples do not fill one --batch-size {config.batch_size}: use a "
                           "smaller --batch-size or --compile eager")
    if mode == "graph" and config.batch_size < ctx.world_size:
        raise PyrovaeError(f"--compile graph needs every rank to get examples: --batch-size "
                           f"{config.batch_size} is below the {ctx.world_size} processes")
    pyro.set_rng_seed(config.seed)  # the network's initial weights depend on the seed alone
    vae = build_vae(config, data.shape).to(device)
    distributed.broadcast_parameters(ctx, vae.state_dict().values())
    if config.binarize == "none":
        vae.likelihood.check(data.train_x, "training data")
        vae.likelihood.check(data.test_x, "held-out data")
    if why is not None and ctx.is_main:
        print(f"pyrovae: --compile auto trains eagerly: {why}", file=sys.stderr)
    capturable = mode == "graph" and device.type == "cuda"
    optimizer = make_optimizer(vae, config.lr, capturable=capturable)
    n = len(data.train_x)
    steps_per_epoch = n // config.batch_size if mode == "graph" else math.ceil(n / config.batch_size)
    if ckpt is not None:
        vae.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _restore_optimizer_flags(optimizer, config.lr, capturable=capturable)
        schedule = from_dict(ckpt["schedule"])
    else:
        schedule = parse_schedule(config.kl_schedule, config.beta,
                                  steps_per_epoch * config.epochs, steps_per_epoch)
    if run_dir is not None and ctx.is_main:
        run_dir = runs.make_run_dir(run_dir, config.dataset)
        runs.write_config(run_dir, config.to_dict())
        if ckpt is not None:
            runs.truncate_metrics(run_dir, "epoch", ckpt["epoch"])
        else:  # a fresh run (overwrite): nothing of an earlier run may stay beside the new config
            for name in (runs.METRICS, runs.CHECKPOINT):
                (run_dir / name).unlink(missing_ok=True)
    elif not ctx.is_main:
        run_dir = None  # only rank 0 writes
    run = Run(vae, data, config, runs.read_metrics(run_dir) if ckpt and run_dir else [], run_dir,
              schedule, compile=mode, world_size=ctx.world_size)
    # CUDA streams, graphs and the default generator belong to the current device: make it ours
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with pyro.get_param_store().scope(), on_device:  # no param names leak into other models
        fit(run, optimizer, ckpt, progress and ctx.is_main, ctx)
    if figures and run_dir is not None:
        from .report import save_run_figures

        save_run_figures(run)
    return run


def make_optimizer(vae: VAE, lr: float, capturable: bool = False) -> torch.optim.Adam:
    """Adam over the VAE's parameters, fused (one kernel for all of them, CPU or CUDA), and
    ``capturable`` (step counts on the device) for CUDA graphs."""
    return torch.optim.Adam(vae.parameters(), lr=lr, fused=True, capturable=capturable)


def _restore_optimizer_flags(optimizer: torch.optim.Adam, lr: float, capturable: bool) -> None:
    """After ``load_state_dict``: this run's lr and kernels, whatever the saved run used."""
    for group in optimizer.param_groups:
        group.update(lr=lr, capturable=capturable, fused=True, foreach=None)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:  # fused Adam keeps its step count beside the parameter
                state["step"] = state["step"].to(p.device, torch.float32)


CHECK_EVERY = 100  # steps between host reads of the accumulated loss in graph mode


def fit(run: Run, optimizer: torch.optim.Optimizer, ckpt: dict | None = None,
        progress: bool = True, ctx: distributed.Context | None = None) -> None:
    """Run the epochs of ``run``, from scratch or from checkpoint ``ckpt``; fills ``run.metrics``.

    Eager steps check each loss on the host; graph steps accumulate the loss on the device and
    the loop reads the sum every :data:`CHECK_EVERY` steps and at the end of each epoch. A
    NaN/inf loss or parameter raises :class:`TrainingDiverged` before the epoch's checkpoint.
    """
    from tqdm.auto import tqdm

    ctx = ctx or distributed.Context()
    vae, data, config, schedule = run.vae, run.data, run.config, run.schedule
    device = data.train_x.device
    grad_sum = distributed.GradientSum(ctx, vae.parameters())
    if run.compile == "graph":
        loss_fn = StaticELBO(config.estimator, config.particles)
        step_fn = steps.GraphStep(lambda x, beta: loss_fn(vae.model, vae.guide, x, beta),
                                  optimizer, grad_sum, device=device)
    else:
        elbo = make_elbo(config.estimator, config.particles)
        step_fn = steps.EagerStep(vae.model, vae.guide, elbo, optimizer, grad_sum)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    epoch, step = 0, 0
    if ckpt is not None:
        epoch, step = ckpt["epoch"], ckpt["step"]
        _restore_rng(ckpt, gen, device, config, epoch, ctx)
    elif ctx.rank > 0:
        pyro.set_rng_seed(ctx.rank_seed(config.seed))  # every rank draws its own noise
    n, bs = len(data.train_x), config.batch_size
    end = n - n % bs if run.compile == "graph" else n  # a captured step needs full batches
    beta = torch.ones((), device=device)
    bar = tqdm(total=math.ceil(end / bs) * (config.epochs - epoch), disable=not progress,
               desc="train", unit="step", mininterval=0.5)
    try:
        while epoch < config.epochs:
            epoch += 1
            vae.train()
            x_all = binarize(data.train_x, gen) if config.binarize == "dynamic" else data.train_x
            perm = torch.randperm(n, generator=gen, device=device)
            total = torch.zeros((), dtype=torch.float64, device=device)
            t0 = time.perf_counter()
            with pyro.validation_enabled(False):  # data were checked once when loaded
                for i in range(0, end, bs):
                    x = x_all[ctx.shard(perm[i:i + bs])]
                    # beta lives in a tensor updated in place: a positional tensor argument
                    # changes without recompiling a JIT-traced (or graph-captured) step
                    beta.fill_(schedule(step))
                    loss = step_fn(x, beta)
                    total += loss
                    step += 1
                    bar.update()
                    if step_fn.host_loss:
                        if not math.isfinite(loss):
                            raise TrainingDiverged(_diverged_message(run, epoch, step, loss))
                        if step % 20 == 0:
                            bar.set_postfix(epoch=epoch, loss=f"{loss / bs:.2f}", refresh=False)
                    elif step % CHECK_EVERY == 0 and not torch.isfinite(total):
                        raise TrainingDiverged(_diverged_message(run, epoch, step, float(total)))
            total = float(total)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            if not math.isfinite(total):
                raise TrainingDiverged(_diverged_message(run, epoch, step, total))
            if not all(torch.isfinite(p).all() for p in vae.parameters()):
                raise TrainingDiverged(_diverged_message(run, epoch, step, "finite, but the "
                                                         "parameters became nan or inf"))
            if not ctx.is_main:
                continue  # rank 0 alone evaluates and writes
            row = {"epoch": epoch, "step": step, "seconds": seconds, "train_loss": total / end,
                   "beta": schedule(step - 1), **_held_out(vae, data, config)}
            row["eval_seconds"] = time.perf_counter() - t0 - seconds
            row.update(compile=run.compile, world_size=ctx.world_size)
            run.metrics.append(row)
            bar.set_postfix(epoch=epoch, test_recon=f"{row['test_recon']:.2f}")
            if run.run_dir is not None:
                runs.append_metrics(run.run_dir, row)
                runs.save_checkpoint(run.run_dir / runs.CHECKPOINT,
                                     checkpoint_payload(run, optimizer, epoch, step, gen))
    finally:
        bar.close()


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


def _held_out(vae: VAE, data: Dataset, config: TrainConfig) -> dict[str, float]:
    vae.eval()
    terms = elbo_terms(vae, data.test_x, config.eval_batch_size)
    return {"test_elbo": terms["elbo"], "test_recon": terms["recon"], "test_kl": terms["kl"],
            "active_units": active_units(vae, data.test_x, batch_size=config.eval_batch_size)}


def _diverged_message(run: Run, epoch: int, step: int, loss: float) -> str:
    where = f"the last good checkpoint ({run.run_dir / runs.CHECKPOINT}, epoch {epoch - 1}) " \
            "is intact" if run.run_dir is not None and epoch > 1 else "no checkpoint was written"
    return (f"training stopped: the loss became {loss} at epoch {epoch}, step {step}; {where}. "
            "Try a smaller --lr, or --likelihood bernoulli/continuous-bernoulli for [0, 1] data")


def checkpoint_payload(run: Run, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                       gen: torch.Generator) -> dict[str, Any]:
    """State dicts and plain data only: loads with ``torch.load(weights_only=True)``."""
    rng = {"torch": torch.get_rng_state(), "data": gen.get_state(), "device": gen.device.type}
    if gen.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(gen.device)
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "step": step,
        "config": run.config.to_dict(),
        "vae": run.vae.spec,
        "model": {k: v.detach().cpu() for k, v in run.vae.state_dict().items()},
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
    needed = {"format", "epoch", "step", "config", "vae", "model", "optimizer", "schedule", "rng"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or needed - set(ckpt):
        raise PyrovaeError(f"{run_dir} holds a checkpoint that pyrovae's training did not write "
                           f"(expected format {CHECKPOINT_FORMAT}): pass a pyrovae run folder")
    return ckpt


def load_run(run_dir: str | os.PathLike, device: str = "cpu", data: bool = True) -> Run:
    """Rebuild the trained :class:`Run` in ``run_dir`` (VAE from its checkpoint, data reloaded)."""
    run_dir = Path(run_dir)
    resolve_device(device)
    ckpt = _load_training_checkpoint(run_dir, device)
    config = TrainConfig.from_dict(ckpt["config"])
    config.device = device
    vae = VAE.from_spec(ckpt["vae"])
    vae.load_state_dict(ckpt["model"])
    vae.to(resolve_device(device)).eval()
    dataset = prepare_data(config).to(device) if data else None
    schedule = from_dict(ckpt["schedule"])
    return Run(vae, dataset, config, runs.read_metrics(run_dir), run_dir, schedule)
