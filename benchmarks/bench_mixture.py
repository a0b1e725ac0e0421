"""The VampPrior's density: pyrovae's DiagNormalMixture against torch's MixtureSameFamily.

Times ``log_prob`` (and its backward pass) of a ``K``-component diagonal Gaussian mixture in
``--z-dim`` dimensions under the plates a model puts around its prior (draws x examples), as
training (100 examples, 5 draws) and ``log p(x)`` evaluation (4,854 draws of one example, the
chunk ``MAX_ELEMENTS`` gives a 784-pixel model at K = 5000) call it. Prints milliseconds per
call, the speed-up and each one's largest difference from a float64 reference (nats).

    python benchmarks/bench_mixture.py [--components 50,500] [--z-dim 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import pyro.distributions as dist
import torch

from pyrovae.distributions import DiagNormalMixture

CASES = {"train (5 x 100)": (5, 100), "evaluate (4854 x 1)": (4854, 1)}


def torch_mixture(locs: torch.Tensor, scales: torch.Tensor) -> dist.MixtureSameFamily:
    return dist.MixtureSameFamily(dist.Categorical(logits=locs.new_zeros(locs.shape[0])),
                                  dist.Normal(locs, scales).to_event(1))


def pyrovae_mixture(locs: torch.Tensor, scales: torch.Tensor) -> DiagNormalMixture:
    return DiagNormalMixture(locs, scales)


def step(make, locs: torch.Tensor, scales: torch.Tensor, z: torch.Tensor, backward: bool) -> torch.Tensor:
    """One call as under a model's plates: the prior expanded to ``z``'s batch shape."""
    lp = make(locs, scales).expand(z.shape[:-1]).log_prob(z)
    if backward:
        lp.sum().backward()
    return lp.detach()


def timed(repeats: int, *args) -> float:
    step(*args)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step(*args)
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--components", default="50,500")
    p.add_argument("--z-dim", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'K':>5} {'case':<20} {'torch ms':>9} {'pyrovae ms':>10} {'speed-up':>8} "
          f"{'torch err':>9} {'pyrovae err':>11}")
    for k in (int(c) for c in args.components.split(",")):
        locs = torch.randn(k, args.z_dim, requires_grad=True)
        scales = (0.05 + torch.rand(k, args.z_dim)).requires_grad_()
        for case, (draws, n) in CASES.items():
            z = (locs.detach()[torch.randint(k, (draws, n))]
                 + 0.3 * scales.detach()[0] * torch.randn(draws, n, args.z_dim))
            exact = torch_mixture(locs.detach().double(), scales.detach().double()).log_prob(z.double())
            backward = case.startswith("train")
            times = [timed(args.repeats, make, locs, scales, z, backward)
                     for make in (torch_mixture, pyrovae_mixture)]
            errors = [(step(make, locs, scales, z, False).double() - exact).abs().max().item()
                      for make in (torch_mixture, pyrovae_mixture)]
            print(f"{k:>5} {case:<20} {times[0]:9.2f} {times[1]:10.2f} {times[0] / times[1]:7.1f}x "
                  f"{errors[0]:9.1e} {errors[1]:11.1e}")


if __name__ == "__main__":
    main()
