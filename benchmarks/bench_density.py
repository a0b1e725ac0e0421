"""Density estimation on dynamically binarized Fashion-MNIST, as reported in the literature.

Trains a VAE with ``pyrovae.train`` (Gaussian prior, MLP encoder/decoder, Bernoulli likelihood,
training images re-binarized every epoch) and evaluates the importance-sampled ``log p(x)`` with
``--iwae-k`` samples (5000 in the literature) on the test images (all 10,000 by default; binarized
once with a fixed seed). Prints the held-out log-likelihood (and the positive NLL the papers
report), training CPU minutes and evaluation minutes. Published NLL for a Gaussian-prior MLP VAE
(300 units, z = 40): 228.7 nats; VampPrior 227.4; a convolutional hierarchical VAE 225.4.

    python benchmarks/bench_density.py --data-dir ../shared/data --estimator dreg:5 \
        --hidden 300 --z-dim 40 --epochs 20 --iwae-k 5000

``--train-minutes M`` trains epoch by epoch (exact resumes) until M minutes of training time are
spent, instead of a fixed ``--epochs``. ``--eval-n`` evaluates the first N test images only (to
measure the cost before a full evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.experiments.compare import train_budget


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("PYROVAE_DATA_DIR"))
    p.add_argument("--estimator", default="dreg:5")
    p.add_argument("--hidden", default="300", help="dense hidden sizes, e.g. 300 or 500,500")
    p.add_argument("--z-dim", type=int, default=40)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--train-minutes", type=float)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iwae-k", type=int, default=5000)
    p.add_argument("--eval-n", type=int, help="first N test images only (default all)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", help="run folder (default a temporary folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs if args.epochs or args.train_minutes else 10
    seconds = args.train_minutes * 60 if args.train_minutes else None
    hidden = [int(h) for h in args.hidden.split(",")]

    data = pyrovae.load_dataset("fashion-mnist", args.data_dir)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-density-"))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run, _ = train_budget(out, data, None if seconds else epochs, seconds, dataset="fashion-mnist",
                       binarize="dynamic", likelihood="bernoulli", net="mlp", hidden=hidden,
                       z_dim=args.z_dim, estimator=args.estimator, batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed)
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    last = run.metrics[-1]
    print(f"trained {len(run.metrics)} epochs of {args.estimator} on {len(data.train_x)} images: "
          f"{train_cpu / 60:.1f} CPU min ({train_wall / 60:.1f} min wall, "
          f"{sum(r['seconds'] for r in run.metrics) / 60:.1f} min in training steps), "
          f"held-out ELBO {last['test_elbo']:.2f}, {last['active_units']} active units",
          flush=True)

    x = run.data.test_x[: args.eval_n]
    run.vae.eval()
    pyro.set_rng_seed(args.seed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    log_px = pyrovae.log_likelihood(run.vae, x, args.iwae_k)
    eval_cpu, eval_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    mean, sem = log_px.mean().item(), (log_px.std() / len(log_px) ** 0.5).item()
    result = {
        "estimator": args.estimator, "hidden": hidden, "z_dim": args.z_dim,
        "epochs": len(run.metrics), "batch_size": args.batch_size, "lr": args.lr,
        "train_cpu_minutes": train_cpu / 60, "train_wall_minutes": train_wall / 60,
        "test_elbo": last["test_elbo"], "active_units": last["active_units"],
        "iwae_k": args.iwae_k, "eval_n": len(x), "log_px": mean, "nll": -mean, "log_px_sem": sem,
        "eval_cpu_minutes": eval_cpu / 60, "eval_wall_minutes": eval_wall / 60,
        "threads": args.threads, "torch": torch.__version__,
    }
    (out / "bench_density.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"log p(x), K={args.iwae_k}, {len(x)} test images: {mean:.2f} +- {sem:.2f} nats "
          f"(NLL {-mean:.2f}; published MLP VAE 228.7, VampPrior 227.4)")
    print(f"evaluation: {eval_cpu / 60:.1f} CPU min ({eval_wall / 60:.1f} min wall); "
          f"written to {out / 'bench_density.json'}")


if __name__ == "__main__":
    main()
