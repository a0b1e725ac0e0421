"""``pyrovae toy``: sample the Bernoulli-latent toy, fit it with each estimator, compare with EM.

Writes a run folder (``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``figures/``) and
prints learned vs true vs EM parameters with the final exact log-likelihood.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyrovae import checks, runs
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.toy import exact, plots
from pyrovae.experiments.toy.data import check_p, check_positive_int, check_sigma, sample_data
from pyrovae.experiments.toy.fit import fit_toy
from pyrovae.experiments.toy.model import ESTIMATORS

P_RANGE = (1e-6, 1 - 1e-6)
MAX_LR = 10.0  # an Adam step size beyond this is a typo
SIGMA_RANGE = (1e-3, 1e3)  # noise scales whose densities and gradients stay finite
MAX_POINTS = 10_000_000  # data points: the exact EM fit holds them all in memory, several times
MAX_STEPS = 10_000_000  # SVI steps per estimator: more is a typo (days of training)


def add_parser(subparsers: Any) -> None:
    """Add the ``toy`` subcommand to an ``argparse`` subparsers object (``func=run``)."""
    parser = subparsers.add_parser(
        "toy",
        help="fit the Bernoulli-latent toy model and compare estimators with exact EM",
        description=(
            "Sample x_i ~ (1-p) N(0, sigma) + p N(1, sigma), fit p (and sigma) with SVI using "
            "each chosen estimator, and compare with the exact maximum-likelihood fit by EM."
        ),
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--p", type=float, default=0.3, help="true P(z=1) of the data (0.3)")
    parser.add_argument("--sigma", type=float, default=0.5, help="true noise scale (0.5)")
    parser.add_argument("--n", type=int, default=500, help="number of data points (500)")
    parser.add_argument(
        "--estimator", "--estimators", dest="estimator",
        nargs="+",
        default=list(ESTIMATORS),
        help="one or more gradient estimators (default: all). "
        + "; ".join(f"{k}: {v.summary}" for k, v in ESTIMATORS.items()),
    )
    parser.add_argument("--steps", type=int, default=300, help="SVI steps per estimator (300)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam step size (0.05)")
    parser.add_argument("--p-init", type=float, default=0.5, help="starting p for SVI and EM (0.5)")
    parser.add_argument(
        "--learn-sigma", action="store_true", help="learn sigma too (else fixed at --sigma)"
    )
    parser.add_argument(
        "--sigma-init", type=float, default=1.0, help="starting sigma with --learn-sigma (1.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data and SVI (0)")
    parser.add_argument("--log-every", type=int, default=1, help="metrics row every k steps (1)")
    parser.add_argument("--out", default=None, help="run folder (default runs/toy-<timestamp>)")


def run(args: argparse.Namespace) -> int:
    """Run ``pyrovae toy``; returns the exit status. User errors raise ``PyrovaeError``."""
    # validate everything before the run folder is created, so a typo leaves nothing behind
    check_p(args.p)
    check_p(args.p_init, "p_init", "--p-init")
    check_sigma(args.sigma)
    check_sigma(args.sigma_init, "sigma_init", "--sigma-init")
    for name in ("p", "p_init"):  # a p within 1e-6 of 0 or 1 leaves EM's standard errors undefined
        checks.finite(getattr(args, name), name, minimum=P_RANGE[0], maximum=P_RANGE[1])
    for name in ("sigma", "sigma_init"):  # sigma_init too: a bad value is a typo even when unused
        checks.finite(getattr(args, name), name, minimum=SIGMA_RANGE[0], maximum=SIGMA_RANGE[1])
    check_positive_int(args.n, "n", "--n")
    check_positive_int(args.steps, "steps", "--steps")
    checks.whole(args.n, "n", maximum=MAX_POINTS)
    checks.whole(args.steps, "steps", maximum=MAX_STEPS)
    checks.seed(args.seed)
    check_positive_int(args.log_every, "log_every", "--log-every")
    sigma_start = args.sigma
    if args.learn_sigma:
        sigma_start = check_sigma(args.sigma_init, "sigma_init", "--sigma-init")
    if not (0 < args.lr <= MAX_LR):
        raise PyrovaeError(f"{checks.label('lr')} must be a number in (0, {MAX_LR:g}], got {args.lr}: "
                           "pass a step size such as 0.05")
    given = [e for arg in args.estimator for e in arg.split(",") if e]  # "a,b" and "a b" alike
    if len(set(given)) != len(given):
        raise PyrovaeError(f"--estimator lists an estimator twice: {given}")
    estimators = list(given)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise PyrovaeError(f"unknown --estimator {unknown or args.estimator}: choose from "
                           f"{', '.join(ESTIMATORS)}")

    x, z = sample_data(args.p, args.sigma, args.n, seed=args.seed)
    em_fit = exact.em(x, p_init=args.p_init, sigma=sigma_start, learn_sigma=args.learn_sigma)
    se = exact.mle_standard_errors(x, em_fit.p, em_fit.sigma, learn_sigma=args.learn_sigma)

    run_dir = runs.make_run_dir(args.out, "toy")
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config.update(command="toy", estimator=estimators, metrics_units="nats per data point")
    runs.write_config(run_dir, config)
    print(f"pyrovae toy: n={args.n}, true p={args.p} sigma={args.sigma}; run folder {run_dir}")

    results = {}
    for name in estimators:
        results[name] = fit_toy(
            x,
            name,
            steps=args.steps,
            lr=args.lr,
            p_init=args.p_init,
            sigma=sigma_start,
            learn_sigma=args.learn_sigma,
            seed=args.seed,
            log_every=args.log_every,
            on_record=lambda row: runs.append_metrics(run_dir, row),
        )

    runs.save_checkpoint(
        run_dir / runs.CHECKPOINT,
        {
            "params": {name: r.params for name, r in results.items()},
            "em": {"p": em_fit.p, "sigma": em_fit.sigma, "loglik": em_fit.loglik},
            "data": {"x": x, "z": z},
        },
    )

    em_ll = em_fit.loglik / args.n
    figures = {
        "data_fit": plots.plot_mixture_fit(
            x,
            (args.p, args.sigma),
            {"EM": (em_fit.p, em_fit.sigma)}
            | {n: (r.final["p"], r.final["sigma"]) for n, r in results.items()},
        ),
        "training": plots.plot_training(runs.read_metrics(run_dir), em_loglik=em_ll),
        "posterior": plots.plot_posterior(
            {n: r.final for n, r in results.items()}, (args.p, args.sigma), x=x
        ),
    }
    plots.save_figures(figures, run_dir / runs.FIGURES)

    true_ll = float(exact.log_marginal(x, args.p, args.sigma).sum()) / args.n
    print(_summary(args, em_fit, se, em_ll, true_ll, results))
    return 0


def _summary(args, em_fit, se, em_ll, true_ll, results) -> str:
    rows = [
        ("true", f"{args.p:.4f}", f"{args.sigma:.4f}", f"{true_ll:.5f}", "", ""),
        (
            "EM (MLE)",
            f"{em_fit.p:.4f} +- {se['p']:.4f}",
            f"{em_fit.sigma:.4f}" + (f" +- {se['sigma']:.4f}" if "sigma" in se else ""),
            f"{em_ll:.5f}",
            "",
            str(em_fit.iterations),
        ),
    ]
    for name, r in results.items():
        f = r.final
        rows.append(
            (
                f"SVI {name}",
                f"{f['p']:.4f}",
                f"{f['sigma']:.4f}",
                f"{f['exact_loglik']:.5f}",
                f"{f['exact_elbo']:.5f}",
                str(f["step"]),
            )
        )
    header = ("", "p", "sigma", "log p(x)/n", "ELBO/n", "steps")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point, ``python -m pyrovae.toy.cli``, with the main CLI's error format."""
    parser = argparse.ArgumentParser(prog="pyrovae toy")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with checks.command_line():
            return run(args)
    except PyrovaeError as exc:
        print(f"pyrovae: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
