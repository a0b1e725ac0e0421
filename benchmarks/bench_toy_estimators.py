"""Compare the toy's gradient estimators (issue 4): gradient variance and time to the EM optimum.

1. Variance of the gradient of ``logit p`` (p's unconstrained parameter) and of the guide weight
   ``w``, over ``--repeats`` evaluations at fixed parameters: the SVI starting point
   (``p = --p-init``, guide ``(w, b) = (0, 0)``) and the optimum (EM ``p``, exact posterior guide).
2. Steps and seconds of SVI (Adam, ``--lr``) from ``--p-init`` until the exact log-likelihood is
   within ``--tol`` nats per point of EM's, median [min, max] over ``--seeds`` seeds.

Prints Markdown tables. Example: ``python benchmarks/bench_toy_estimators.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import pyro
import torch

from pyrovae.experiments.toy import ESTIMATORS, BernoulliToy, em, exact, fit_toy, sample_data
from pyrovae.infer.registry import make_elbo


def gradient_samples(
    x: torch.Tensor, name: str, p: float, sigma: float, w: float, b: float, repeats: int
) -> torch.Tensor:
    """``(repeats, 2)`` gradients of the loss w.r.t. ``logit p`` and the guide weight ``w``."""
    est = ESTIMATORS[name]
    toy = BernoulliToy(p_init=p, sigma=sigma, guide_init=(w, b), baseline=est.baseline)
    guide, elbo = toy.guide, make_elbo(est.spec, max_plate_nesting=1)
    out = []
    with pyro.get_param_store().scope():
        store = pyro.get_param_store()
        # the first 50 calls let TraceGraph_ELBO's decaying-average baseline settle
        for i in range(50 + repeats):
            elbo.loss_and_grads(toy.model, guide, x)
            params = dict(store.named_parameters())
            if i >= 50:
                out.append(torch.stack([params["p"].grad.clone(), params["guide_w"].grad.clone()]))
            for v in params.values():
                v.grad = None
    return torch.stack(out)


def steps_to_target(records: list[dict], target: float) -> tuple[int, float] | None:
    """(step, seconds) of the first record whose exact log-likelihood per point is >= target."""
    hit = next((r for r in records if r["exact_loglik"] >= target), None)
    return None if hit is None else (hit["step"], hit["seconds"])


def _median_range(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--p-init", type=float, default=0.7)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--tol", type=float, nargs="+", default=[0.01, 0.001, 0.0001])
    args = parser.parse_args()
    torch.set_num_threads(1)  # a few hundred numbers per step: threads only add overhead

    start = time.perf_counter()
    x, _ = sample_data(args.p, args.sigma, args.n, seed=0)
    em_fit = em(x, p_init=args.p_init, sigma=args.sigma)
    em_ll = em_fit.loglik / args.n
    w_opt, b_opt = (float(t) for t in exact.posterior_params(em_fit.p, args.sigma))
    points = {
        "start": (args.p_init, 0.0, 0.0),
        "optimum": (em_fit.p, w_opt, b_opt),
    }
    print(
        f"data: n={args.n}, p={args.p}, sigma={args.sigma} (fixed); EM p={em_fit.p:.4f}, "
        f"log p(x)/n={em_ll:.5f}; torch {torch.__version__}, pyro {pyro.__version__}, "
        f"{platform.processor() or platform.machine()}, 1 thread\n"
    )

    print(f"Gradient of the loss over {args.repeats} repeats at fixed parameters\n")
    print("| point | estimator | mean d/d logit p | var d/d logit p | var d/d w (guide) |")
    print("|---|---|---|---|---|")
    for point, (p, w, b) in points.items():
        q = torch.sigmoid(w * x + b)
        for name in ESTIMATORS:
            g = gradient_samples(x, name, p, args.sigma, w, b, args.repeats)
            mean, var = g.mean(0), g.var(0)
            print(
                f"| {point} (p={p:.3f}, w={w:.2f}) | {name} | {mean[0]:.3f} | {var[0]:.4g} | "
                f"{var[1]:.4g} |"
            )
        print(f"| {point} | closed form sum q(1-q) | | {float((q * (1 - q)).sum()):.4g} | |")

    tol_min = min(args.tol)
    print(
        f"\nSVI from p={args.p_init} (Adam lr={args.lr}) until log p(x)/n is within tol of EM: "
        f"median [min, max] over {args.seeds} seeds\n"
    )
    header = " | ".join(f"steps (tol {t:g}) | seconds (tol {t:g})" for t in args.tol)
    print(f"| estimator | ms/step | {header} |")
    print("|---|---|" + "---|---|" * len(args.tol))
    for name in ESTIMATORS:
        hits: dict[float, list[tuple[int, float] | None]] = {t: [] for t in args.tol}
        ms_per_step = []
        for seed in range(args.seeds):
            result = fit_toy(
                x,
                name,
                steps=args.max_steps,
                lr=args.lr,
                p_init=args.p_init,
                sigma=args.sigma,
                seed=seed,
                stop=lambda r: r["exact_loglik"] >= em_ll - tol_min,
            )
            final = result.final
            ms_per_step.append(1000 * final["seconds"] / max(final["step"], 1))
            for t in args.tol:
                hits[t].append(steps_to_target(result.records, em_ll - t))
        cells = []
        for t in args.tol:
            reached = [h for h in hits[t] if h is not None]
            missed = len(hits[t]) - len(reached)
            if not reached:
                cells += [f"> {args.max_steps}", "-"]
                continue
            note = f" ({missed} of {args.seeds} missed)" if missed else ""
            cells.append(_median_range([h[0] for h in reached], ".0f") + note)
            cells.append(_median_range([h[1] for h in reached], ".3f"))
        print(f"| {name} | {statistics.median(ms_per_step):.1f} | " + " | ".join(cells) + " |")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
