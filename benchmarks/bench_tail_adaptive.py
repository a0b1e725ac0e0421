"""The tail-adaptive gradient of pyrovae against a brute-force reference and Pyro 1.9.2's surrogate.

A 1-D model ``z ~ N(0, 1)``, ``x | z ~ N(z, 0.5^2)`` with one observation, and a guide
``q(z) = N(mu, exp(log_s)^2)`` away from the posterior. With ``K`` reparameterized draws
``z_i = mu + exp(log_s) eps_i`` and ``log w_i = log p(x, z_i) - log q(z_i)``, the tail-adaptive
f-divergence gradient (Wang, Liu & Liu 2018, algorithm 1) of the loss is
``-sum_i gamma_i d log w_i / d(mu, log_s)`` with ``gamma_i`` proportional to ``F(w_i)^beta``,
``F(t) = (1/K) #{j: w_j >= t}``, ``beta = -1``. Prints the mean gradient (and its Monte Carlo
standard error) of

* ``pyrovae``: ``TailAdaptive_ELBO(K).differentiable_loss`` under autograd, one seed per estimate;
* ``reference``: that formula written out here in plain torch, over many independent K-draw sets;
* ``pyro-1.9.2``: ``pyro.infer.TraceTailAdaptive_ELBO``, which weighs by the sorting permutation.

    python benchmarks/bench_tail_adaptive.py --k 5 --seeds 4000
"""

from __future__ import annotations

import argparse
import math
import warnings

import pyro
import pyro.distributions as dist
import torch

from pyrovae.infer.estimators import TailAdaptive_ELBO

X, NOISE = 1.5, 0.5
MU, LOG_S = 0.3, math.log(0.9)


def programs(mu: torch.Tensor, log_s: torch.Tensor):
    x = torch.tensor([X], dtype=torch.float64)

    def model():
        with pyro.plate("data", 1):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=torch.float64), 1.0))
            pyro.sample("x", dist.Normal(z, NOISE), obs=x)

    def guide():
        with pyro.plate("data", 1):
            pyro.sample("z", dist.Normal(mu.expand(1), log_s.exp().expand(1)))

    return model, guide


def params() -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(MU, dtype=torch.float64, requires_grad=True),
            torch.tensor(LOG_S, dtype=torch.float64, requires_grad=True))


def draws_of(elbo, seeds: int) -> torch.Tensor:
    """``(seeds, 2)`` loss gradients in (mu, log_s), one ``K``-particle estimate per seed."""
    rows = []
    for seed in range(seeds):
        pyro.set_rng_seed(seed)
        mu, log_s = params()
        model, guide = programs(mu, log_s)
        loss = elbo.differentiable_loss(model, guide)
        rows.append(torch.stack(torch.autograd.grad(loss, (mu, log_s))))
    return torch.stack(rows)


def reference_draws(k: int, repeats: int, beta: float = -1.0, seed: int = 0) -> torch.Tensor:
    """``(repeats, 2)``: ``-sum_i gamma_i d log w_i`` from the paper's formula, vectorized; one
    copy of (mu, log_s) per repeat, so one backward pass gives every repeat's gradient."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.full((repeats, 1), MU, dtype=torch.float64, requires_grad=True)
    log_s = torch.full((repeats, 1), LOG_S, dtype=torch.float64, requires_grad=True)
    z = mu + log_s.exp() * torch.randn(repeats, k, generator=gen, dtype=torch.float64)
    log_w = (dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, NOISE).log_prob(torch.tensor(X))
             - dist.Normal(mu, log_s.exp()).log_prob(z))
    lw = log_w.detach()
    tail = (lw.unsqueeze(-1) >= lw.unsqueeze(-2)).double().mean(-2)  # [r, i]: F(w_i) over j
    gamma = tail.pow(beta)
    gamma = gamma / gamma.sum(-1, keepdim=True)
    grads = torch.autograd.grad(-(gamma * log_w).sum(), (mu, log_s))
    return torch.cat(grads, dim=-1)


def report(name: str, rows: torch.Tensor) -> None:
    mean, se = rows.mean(0), rows.std(0) / math.sqrt(len(rows))
    print(f"{name:<12} d/d mu {mean[0]: .5f} +- {se[0]:.5f}   d/d log_s {mean[1]: .5f} +- {se[1]:.5f}"
          f"   ({len(rows)} estimates)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=5, help="particles per estimate")
    p.add_argument("--seeds", type=int, default=4000, help="estimates of pyrovae's and Pyro's gradients")
    p.add_argument("--repeats", type=int, default=1_000_000, help="estimates of the reference")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"x = {X}, noise {NOISE}, q = N({MU}, {math.exp(LOG_S):.2f}^2), K = {args.k}, beta = -1; "
          "gradients of the loss")
    report("pyrovae", draws_of(TailAdaptive_ELBO(num_particles=args.k, vectorize_particles=True,
                                                 max_plate_nesting=1), args.seeds))
    report("reference", reference_draws(args.k, args.repeats))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyro_elbo = pyro.infer.TraceTailAdaptive_ELBO(num_particles=args.k, vectorize_particles=True,
                                                      max_plate_nesting=1)
        report("pyro-1.9.2", draws_of(pyro_elbo, args.seeds))


if __name__ == "__main__":
    main()
