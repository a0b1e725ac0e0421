"""The ``gradients`` and ``compare`` commands (see :mod:`pyrovae.experiments.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pyrovae import checks
from pyrovae.cli.options import add_config_args, config_from, run_model, sizes, writable
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.compare import (
    DEFAULT_ESTIMATORS,
    DEFAULT_SNR_KS,
    compare,
    gradient_batch,
    gradient_markdown,
    gradient_report,
    parse_estimators,
    write_gradients,
)
from pyrovae.memory import MAX_PARTICLES
from pyrovae.training.config import MAX_EPOCHS

MAX_SEEDS = 1000  # runs per estimator
MAX_SECONDS = 30 * 24 * 3600.0  # a training budget of more than 30 days per estimator is a typo
MAX_DRAWS = 1_000_000  # gradient draws per estimator: more is a typo (hours per estimator)

# training options `compare` sets itself (the estimators, the budget) or does not offer
_NOT_COMPARE_OPTIONS = {"model", "noise", "estimator", "particles", "beta", "kl_schedule", "epochs"}


def add_parsers(subparsers: Any) -> None:
    """Add the ``gradients`` and ``compare`` commands to the ``pyrovae`` sub-command parser."""
    p = subparsers.add_parser(
        "gradients", help="gradient mean, variance and SNR of each estimator at a run's parameters",
        description="Draw each estimator's gradient many times at the trained parameters of RUN "
        "and report the guide's (encoder) and the model's (decoder) gradient mean, variance and "
        "SNR |E g| / std g.")
    p.add_argument("run", help="run folder (or its checkpoint.pt)")
    p.add_argument("--estimators", "--estimator", dest="estimators", default=",".join(DEFAULT_ESTIMATORS),
                   help=f"comma-separated specs (default {','.join(DEFAULT_ESTIMATORS)})")
    p.add_argument("--draws", type=int, default=100, help="gradient draws per estimator (100)")
    p.add_argument("--batch-size", "--batch", type=int, default=64, dest="batch",
                   help="training examples in the gradient batch (64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="module:Class of a run that trained your own model")
    p.add_argument("--out", help="folder for gradients.{csv,md} (default RUN)")
    p.set_defaults(func=_gradients)

    p = subparsers.add_parser(
        "compare", help="train one network per estimator under one budget; table and figures",
        description="Train the same VAE from the same seed with each estimator under the same "
        "budget, evaluate each with the same importance-sampled log p(x), and write "
        "compare.{csv,md} and figures.")
    p.add_argument("--estimators", "--estimator", dest="estimators", default=",".join(DEFAULT_ESTIMATORS),
                   help=f"comma-separated specs (default {','.join(DEFAULT_ESTIMATORS)})")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int, help="epochs per estimator")
    budget.add_argument("--seconds", type=float,
                        help="training seconds per estimator (evaluation excluded; whole epochs)")
    p.add_argument("--iwae-k", type=int, default=1000, help="importance samples K (default 1000)")
    p.add_argument("--eval-n", type=int, help="evaluate on the first N held-out images (all)")
    p.add_argument("--curve-k", type=int, default=100,
                   help="K of the per-epoch log p(x) in the time figure (default 100)")
    p.add_argument("--draws", type=int, default=100, help="gradient draws for the SNRs (100)")
    p.add_argument("--grad-batch", type=int, default=64, help="images in the SNR batch (64)")
    p.add_argument("--snr-k", type=sizes, default=list(DEFAULT_SNR_KS),
                   help="K values of the SNR-against-K figure (default 1,3,10,30)")
    p.add_argument("--out", required=True, help="comparison folder (rerun to resume it)")
    p.add_argument("--seeds", type=int, default=1, help="runs per estimator, seeds --seed, --seed + 1, "
                   "...; the table gives the mean and standard error (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    add_config_args(p, exclude=_NOT_COMPARE_OPTIONS)
    p.set_defaults(func=_compare)


def _gradients(args: argparse.Namespace) -> int:
    from pyrovae.training.loop import load_run

    specs = parse_estimators(args.estimators)
    checks.whole(args.draws, "draws", minimum=2, maximum=MAX_DRAWS)
    checks.whole(args.batch, "batch_size")
    checks.seed(args.seed)
    out = Path(args.out) if args.out else Path(args.run)
    writable(out, folder=True)
    run = load_run(args.run, model=run_model(args.model), device=args.device)
    rows = gradient_report(run.model, gradient_batch(run, args.batch, args.seed), specs,
                           args.draws, args.seed)
    write_gradients(rows, out)
    print(gradient_markdown(rows), end="")
    print(f"{args.draws} draws on {args.batch} training images; written to "
          f"{out / 'gradients.csv'} and gradients.md")
    return 0


def _compare(args: argparse.Namespace) -> int:
    config = config_from(args, exclude=_NOT_COMPARE_OPTIONS)
    checks.whole(args.draws, "draws", minimum=2, maximum=MAX_DRAWS)
    checks.whole(args.grad_batch, "grad_batch")
    if args.epochs is not None:
        checks.whole(args.epochs, "epochs", maximum=MAX_EPOCHS)
    if args.seconds is not None:
        checks.finite(args.seconds, "seconds", minimum=0, maximum=MAX_SECONDS)
    for name in ("iwae_k", "curve_k"):
        checks.whole(getattr(args, name), name, maximum=MAX_PARTICLES)
    if max(args.snr_k) > MAX_PARTICLES:
        raise PyrovaeError(f"--snr-k values must be at most {MAX_PARTICLES:,}, got {max(args.snr_k):,}")
    checks.whole(args.seeds, "seeds", maximum=MAX_SEEDS)
    writable(args.out, folder=True)
    compare(args.out, args.estimators, epochs=args.epochs, seconds=args.seconds,
            iwae_k=args.iwae_k, eval_n=args.eval_n, curve_k=args.curve_k, draws=args.draws,
            grad_batch=args.grad_batch, snr_ks=args.snr_k, seeds=args.seeds,
            progress=not args.no_progress, **config)
    print((Path(args.out) / "compare.md").read_text(), end="")
    print(f"table and figures in {args.out}")
    return 0
