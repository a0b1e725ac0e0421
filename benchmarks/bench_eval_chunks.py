"""Seconds per test image of ``log_likelihood`` (K importance samples) against its chunk size.

``log_likelihood`` draws examples and samples in chunks of about ``max_elements`` site elements
(default :data:`pyrovae.evaluation.metrics.MAX_ELEMENTS`). This script times the density protocol's
evaluation (K = 5000, the 784-300-300-40 network of ``bench_density.py``) on ``--n`` binarized
Fashion-MNIST test images for each ``--chunks`` value (powers of two), repeated ``--repeats`` times
in turn, and prints the median seconds per image and its ratio to the default. The weights are
untrained: the arithmetic is the same as a trained model's.

    python benchmarks/bench_eval_chunks.py --data-dir ../shared/data [--n 100] [--k 5000]
        [--chunks 18,20,22,24] [--model vae] [--net mlp] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch

import pyrovae
from pyrovae.evaluation.metrics import MAX_ELEMENTS


def main(argv: list[str] | None = None) -> dict[int, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--chunks", default="18,20,22,24", help="log2 of max_elements, comma-separated")
    p.add_argument("--model", default="vae")
    p.add_argument("--net", default="mlp")
    p.add_argument("--hidden", default="300,300")
    p.add_argument("--z-dim", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = pyrovae.load_dataset("fashion-mnist", args.data_dir)
    x = pyrovae.binarize(data.test_x[: args.n], torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    model = pyrovae.build_model(args.model, tuple(x.shape[1:]), args.z_dim,
                                [int(h) for h in args.hidden.split(",")], args.net, "bernoulli", None)
    sizes = [1 << int(c) for c in args.chunks.split(",")]
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.repeats):
        for s in sizes:  # interleaved, so drift in the machine's speed hits every size alike
            t0 = time.perf_counter()
            pyrovae.log_likelihood(model, x, args.k, max_elements=s)
            times[s].append((time.perf_counter() - t0) / args.n)
    median = {s: statistics.median(t) for s, t in times.items()}
    base = median.get(MAX_ELEMENTS, median[sizes[-1]])
    print(f"{args.model} ({args.net}) {args.hidden}, z {args.z_dim}; K={args.k:,}, {args.n} images, "
          f"{args.threads} thread(s), {args.repeats} repeats")
    print(f"{'max_elements':>14} {'s/image':>8} {'x default':>9} {'10k images, min':>16}")
    for s in sizes:
        print(f"{f'2^{s.bit_length() - 1}':>14} {median[s]:8.4f} "
              f"{median[s] / base:9.2f} {median[s] * 10_000 / 60:16.1f}")
    return median


if __name__ == "__main__":
    main()
