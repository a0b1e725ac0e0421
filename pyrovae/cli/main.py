"""Command line: ``pyrovae COMMAND ...`` (also ``python -m pyrovae``); ``pyrovae --help`` lists them.

Every command is a thin layer over the Python API; errors a user can cause print one line
``pyrovae: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pyrovae import checks
from pyrovae.cli import compare as compare_cmd
from pyrovae.cli import toy as toy_cli
from pyrovae.cli.options import (
    add_config_args,
    config_from,
    run_folder,
    run_model,
    user_model,
    writable,
)
from pyrovae.errors import PyrovaeError
from pyrovae.infer.beta import check_beta
from pyrovae.memory import MAX_PARTICLES

MAX_GRID = 10_000  # images in one sample grid or view row: more is unreadable
MAX_SAMPLES = 1_000_000  # images per sampler for the quality scores
MAX_SPAN = 1e3  # traversal range in prior standard deviations
MAX_TRACK_EVERY = 10**6  # steps between tracked rows: more is a typo
MAX_SEEDS = 1000  # runs per row of a sweep or comparison


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument gives one line (not the usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE and write a run folder",
                       description="Train a VAE with SVI. Options left out take the data set's "
                       "defaults (see the README).")
    add_config_args(p)
    p.add_argument("--out", help="run folder (default runs/<dataset>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a trained run already in --out (default: refuse)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tracking", help="experiment trackers, comma-separated: tensorboard, mlflow, "
                   "jsonl (files inside the run folder; default none)")
    p.add_argument("--track-every", type=int, default=50, help="steps between per-step tracking rows")
    p.add_argument("--config", metavar="FILE", help="training options from a TOML, YAML or JSON "
                   "file (flags given here override it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved options as "
                   "TOML (readable by --config) and train nothing")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from pyrovae.cli.config_file import read_config_file
    from pyrovae.training.loop import train

    checks.whole(args.track_every, "track_every", maximum=MAX_TRACK_EVERY)
    given = {**(read_config_file(args.config) if args.config else {}), **config_from(args)}
    if args.print_config:
        return _print_config(args, given)
    obj = user_model(given.get("model"))
    if obj is not None:
        given["model"] = obj
    tracking = dict(tracking=args.tracking, track_every=args.track_every)
    if args.resume:
        if _nothing_left(args, given):
            return 0
        run = train(run_dir=run_folder(args.resume), resume=True, progress=not args.no_progress,
                    **tracking, **given)
    else:
        writable(args.out or ".", folder=True)
        run = train(run_dir=args.out or _default_out(given.get("dataset") or "mnist-5k"),
                    progress=not args.no_progress, overwrite=args.overwrite, **tracking, **given)
    if run.world_size > 1 and not run.metrics:
        return 0  # a data-parallel rank other than 0: rank 0 reports
    last = run.metrics[-1] if run.metrics else {}
    print(f"run folder: {run.run_dir}")
    if last and last["test_elbo"] is None:
        print(f"epoch {last['epoch']}: train loss {last['train_loss']:.2f}, held-out "
              f"reconstruction log-likelihood {last['test_recon']:.2f} nats")
    elif last:
        print(f"epoch {last['epoch']}: train loss {last['train_loss']:.2f}, held-out ELBO "
              f"{last['test_elbo']:.2f} nats (recon {last['test_recon']:.2f}, KL "
              f"{last['test_kl']:.2f}), {last['active_units']} active units")
    return 0


def _print_config(args: argparse.Namespace, given: dict) -> int:
    """The config a new run with these options would record, as TOML on standard output."""
    from pyrovae.cli.config_file import to_toml
    from pyrovae.training.config import TrainConfig, resolve

    if args.resume:
        raise PyrovaeError("--print-config shows a new run's options: leave out --resume (a run's "
                           "options are in RUN/config.json)")
    if user_model(given.get("model")) is not None:
        raise PyrovaeError("--print-config shows the built-in models' options: a module:Class model "
                           "configures itself")
    print(to_toml(resolve(TrainConfig.from_dict({**TrainConfig().to_dict(), **given})).to_dict()), end="")
    return 0


def _nothing_left(args: argparse.Namespace, given: dict) -> bool:
    """``--resume`` of a finished run without a larger ``--epochs``: say so instead of training."""
    from pyrovae import runs

    folder = run_folder(args.resume)
    try:
        recorded = runs.read_config(folder)
    except PyrovaeError:
        return False  # the loader says what is wrong with the folder
    done = len(runs.read_metrics(folder))
    epochs = given.get("epochs", recorded.get("epochs"))
    if isinstance(epochs, int) and done >= epochs:
        print(f"pyrovae: nothing left to train: {folder} has {done} of {epochs} epochs; pass "
              f"--epochs N (N > {done}) to continue it", file=sys.stderr)
        return True
    return False


def _default_out(dataset: str) -> str:
    import time

    safe = dataset.replace(":", "-").replace("/", "_")
    return str(Path("runs") / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="held-out ELBO and importance-sampled log p(x) of a run")
    p.add_argument("run", help="run folder (or its checkpoint.pt)")
    p.add_argument("--iwae-k", type=int, default=1000, help="importance samples K (default 1000)")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--limit", type=int, help="evaluate N images drawn at random (seeded by --seed)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="module:Class of a run that trained your own model")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    import torch

    from pyrovae.data.datasets import binarize
    from pyrovae.evaluation.metrics import evaluate
    from pyrovae.runs import write_json
    from pyrovae.training.loop import EVAL_SEED, load_run

    checks.whole(args.iwae_k, "iwae_k", maximum=MAX_PARTICLES)
    checks.whole(args.batch_size, "batch_size")
    checks.seed(args.seed)
    if args.limit is not None:
        checks.whole(args.limit, "limit")
    run = load_run(args.run, model=run_model(args.model), device=args.device)
    batch = run.data.inputs(args.split, run.inputs)  # every input the model takes, labels too
    if args.split == "train" and run.config.binarize == "dynamic":
        x = batch[0]  # grey levels: one fixed draw, like held-out data
        batch = (binarize(x.cpu(), torch.Generator().manual_seed(EVAL_SEED)).to(x.device), *batch[1:])
    if args.limit is not None and args.limit < len(batch[0]):  # random: some sets are sorted by class
        pick = torch.randperm(len(batch[0]), generator=torch.Generator().manual_seed(args.seed))
        batch = tuple(t[pick[: args.limit].to(t.device)] for t in batch)
    x = batch if len(batch) > 1 else batch[0]
    result = evaluate(run.vae, x, iwae_k=args.iwae_k, batch_size=args.batch_size, seed=args.seed)
    result.update(split=args.split, seed=args.seed, limit=args.limit)
    name = f"eval-K{args.iwae_k}{'' if args.split == 'test' else '-train'}" \
        f"{'' if args.limit is None else f'-n{args.limit}-seed{args.seed}'}.json"
    write_json(Path(args.run) / name, result)
    print(f"{'quantity (nats per example)':<32} value")
    for key, label in [("elbo", "ELBO"), ("recon", "reconstruction E_q log p(x|z)"),
                       ("kl", "KL(q(z|x) || p(z))"), ("log_px", f"log p(x), IWAE K={args.iwae_k}")]:
        if result.get(key) is not None:
            print(f"{label:<32} {result[key]:.3f}")
    print(f"{'active units':<32} {result['active_units']}")
    print(f"{result['n']} {args.split} images; written to {Path(args.run) / name}")
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="an image grid of samples from a trained run")
    p.add_argument("run", help="run folder (or its checkpoint.pt)")
    p.add_argument("--sampler", default="prior",
                   help="prior (the model run without observations, default), aggregate (the "
                   "aggregate posterior of the training set) or gmm (a Gaussian mixture fitted on "
                   "the training codes); aggregate and gmm need a built-in model's decoder")
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=64,
                   help=f"number of samples (at most {MAX_GRID:,})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="PNG path, or an existing folder to write samples-<seed>.png in "
                   "(default RUN/figures/samples-<seed>.png)")
    p.add_argument("--model", help="module:Class of a run that trained your own model")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    import torch

    from pyrovae.evaluation.generate import encode, sample
    from pyrovae.evaluation.samplers import NEEDS_TRAINING_CODES, SAMPLER_NAMES, sample_codes
    from pyrovae.training.loop import load_run
    from pyrovae.viz import plots

    if args.sampler not in SAMPLER_NAMES:
        raise PyrovaeError(f"unknown --sampler {args.sampler!r}: choose one of {', '.join(SAMPLER_NAMES)}")
    checks.whole(args.n, "n", maximum=MAX_GRID)
    checks.seed(args.seed)
    out = _sample_path(args)
    needs_data = args.sampler in NEEDS_TRAINING_CODES
    try:
        run = load_run(args.run, model=run_model(args.model), device=args.device, data=needs_data)
    except PyrovaeError as exc:
        if not needs_data or "checkpoint" in str(exc):
            raise
        raise PyrovaeError(f"--sampler {args.sampler} needs the run's training data to build the "
                           f"aggregate posterior, and it cannot be loaded ({exc}); use --sampler "
                           "prior, or restore the data") from None
    if args.sampler == "prior":
        images = sample(run.model, args.n, seed=args.seed)
    else:
        if not hasattr(run.model, "decode"):
            raise PyrovaeError(f"--sampler {args.sampler} decodes codes with the model's decoder, and "
                               f"{type(run.model).__name__} has no decode(): use --sampler prior")
        loc, scale = encode(run.model, run.data.train_x)
        torch.manual_seed(args.seed)
        codes = sample_codes(args.sampler, args.n, loc, scale)
        images = run.model.decode(codes.to(loc.device))
    plots.save(plots.plot_images(images, f"{args.n} samples, {args.sampler} sampler"), out)
    print(f"wrote {out}")
    return 0


def _sample_path(args: argparse.Namespace) -> Path:
    """``--out`` (a folder gets the default file name), else ``RUN/figures/``; checked writable."""
    default = f"samples-{args.seed}.png" if args.sampler == "prior" else \
        f"samples-{args.sampler}-{args.seed}.png"
    out = Path(args.out) if args.out else Path(args.run) / "figures" / default
    if out.is_dir():
        out = out / default
    writable(out)
    if out.suffix.lower() != ".png":
        raise PyrovaeError(f"--out must be a PNG path ending in .png, or a folder, got {out}")
    return out


def _add_views(sub) -> None:
    p = sub.add_parser("views", help="latent-space views of a run: interpolations, traversals")
    p.add_argument("run", help="run folder (or its checkpoint.pt)")
    p.add_argument("--pairs", type=int, default=4, help="held-out pairs to interpolate between")
    p.add_argument("--steps", type=int, default=10, help="images per interpolation/traversal row")
    p.add_argument("--mode", choices=["linear", "spherical"], default="linear")
    p.add_argument("--index", type=int, default=0, help="held-out image whose code is traversed")
    p.add_argument("--span", type=float, default=3.0, help="traversal range -span..span")
    p.add_argument("--model", help="module:Class of a run that trained your own model")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_views)


def _views(args) -> int:
    from pyrovae.evaluation.generate import encode
    from pyrovae.evaluation.latent_views import traversal
    from pyrovae.experiments.baselines import interpolation_grid
    from pyrovae.training.loop import load_run
    from pyrovae.viz import plots

    if args.pairs < 1 or args.steps < 2:
        raise PyrovaeError("--pairs must be >= 1 and --steps >= 2")
    checks.whole(args.steps, "steps", minimum=2, maximum=MAX_GRID)
    checks.finite(args.span, "span", minimum=0, maximum=MAX_SPAN)
    run = load_run(args.run, model=run_model(args.model), device=args.device)
    if not hasattr(run.model, "decode"):
        raise PyrovaeError(f"views decode latent codes, and {type(run.model).__name__} has no decode()")
    x = run.data.test_x
    if not 0 <= args.index < len(x) or 2 * args.pairs > len(x):
        raise PyrovaeError(f"the held-out set has {len(x)} images: lower --index or --pairs")
    folder = Path(args.run) / "figures"
    grid = interpolation_grid(run.vae, x, args.pairs, args.steps, args.mode)
    a = plots.save(plots.plot_images(grid, f"{args.mode} interpolations", nrow=args.steps),
                   folder / f"interpolation-{args.mode}.png")
    z = encode(run.vae, x[args.index:args.index + 1])[0][0]
    codes = traversal(z, span=args.span, steps=args.steps)
    values = [-args.span + 2 * args.span * i / (args.steps - 1) for i in range(args.steps)]
    b = plots.save(plots.plot_traversal(run.vae.decode(codes), range(len(z)), values,
                                        f"traversals of held-out image {args.index}"),
                   folder / "traversal.png")
    print(f"wrote {a} and {b}")
    return 0


def _add_baselines(sub) -> None:
    p = sub.add_parser("baselines", help="AE, DAE and VAE with the same networks, every sampler",
                       description="Train an auto-encoder, a denoising auto-encoder and a VAE with "
                       "the same networks and score the images of each sampler.")
    add_config_args(p, exclude={"beta", "kl_schedule", "model", "noise"})
    p.add_argument("--models", default="ae,dae,vae", help="comma-separated (default ae,dae,vae)")
    p.add_argument("--samplers", default="prior,aggregate,gmm", help="comma-separated")
    p.add_argument("--n-samples", "--n", dest="n_samples", type=int, default=1000,
                   help="images per sampler for the scores")
    p.add_argument("--out", required=True, help="experiment folder (rerun to resume it)")
    _add_experiment_args(p, seeds=False)
    p.set_defaults(func=_baselines)


def _baselines(args) -> int:
    from pyrovae.experiments.baselines import compare_models

    config = config_from(args)
    checks.whole(args.n_samples, "n_samples", maximum=MAX_SAMPLES)
    writable(args.out, folder=True)
    models = [m for m in args.models.split(",") if m]
    compare_models(args.out, models, [s for s in args.samplers.split(",") if s], args.n_samples,
                   progress=not args.no_progress, **config)
    print((Path(args.out) / "baselines.md").read_text(), end="")
    return 0


def _add_experiment_args(p: argparse.ArgumentParser, seeds: bool = True) -> None:
    """``--seeds`` and ``--no-progress``, as every multi-run command spells them."""
    if seeds:
        p.add_argument("--seeds", type=int, default=1, help="runs per row, seeds --seed, --seed + 1, "
                       "...; the table gives the mean and standard error (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")


def _floats(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,1,4, got {text!r}") from None


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="the rate-distortion experiment: several betas and schedules",
                       description="Train the same VAE at several betas (constant schedule) and "
                       "with each KL schedule; write one table and figures.")
    add_config_args(p, exclude={"beta", "kl_schedule", "model", "noise"})
    p.add_argument("--betas", type=_floats, default=[0.25, 0.5, 1, 2, 4, 8],
                   help="betas with a constant schedule (default 0.25,0.5,1,2,4,8)")
    p.add_argument("--schedule", action="append", dest="schedules",
                   help="an annealing schedule to run (repeat; default linear, cyclical, sigmoid)")
    p.add_argument("--schedule-beta", type=float, default=1.0,
                   help="the target beta of the annealed runs (default 1)")
    p.add_argument("--out", required=True, help="sweep folder (rerun to resume it)")
    _add_experiment_args(p)
    p.set_defaults(func=_sweep)


def _sweep(args) -> int:
    from pyrovae.experiments.sweep import DEFAULT_SCHEDULES, sweep
    from pyrovae.infer.schedules import MAX_STEPS, parse_schedule

    for beta in args.betas:
        check_beta(beta, "betas")
    check_beta(args.schedule_beta, "schedule_beta")
    writable(args.out, folder=True)
    schedules = args.schedules if args.schedules is not None else list(DEFAULT_SCHEDULES)
    for spec in schedules:  # the spec's own checks, before the beta runs train
        parse_schedule(spec, args.schedule_beta, total_steps=MAX_STEPS)
    checks.whole(args.seeds, "seeds", maximum=MAX_SEEDS)
    sweep(args.out, args.betas, schedules, args.schedule_beta, progress=not args.no_progress,
          seeds=args.seeds, **config_from(args))
    print((Path(args.out) / "sweep.md").read_text(), end="")
    print(f"table and figures in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pyrovae import __version__

    parser = _Parser(prog="pyrovae", description="Variational auto-encoders as Pyro programs.")
    parser.add_argument("--version", action="version", version=f"pyrovae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_evaluate(sub)
    _add_sample(sub)
    _add_sweep(sub)
    _add_views(sub)
    _add_baselines(sub)
    compare_cmd.add_parsers(sub)
    toy_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyrovae`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with checks.command_line():  # messages name the flags the user typed
            if isinstance(getattr(args, "run", None), str):  # the commands that read a run folder
                args.run = run_folder(args.run)
            return args.func(args) or 0
    except PyrovaeError as exc:
        print(f"pyrovae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyrovae: interrupted; the last checkpoint written is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

