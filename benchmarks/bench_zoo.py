"""Seconds per training epoch of the zoo's models against the plain VAE, on the same data.

Each model trains for ``--epochs`` epochs (estimator ``trace``, the data set's default network and
batch size) on the offline ``mnist-5k`` (or ``--dataset``); the script prints the median training
seconds per epoch (held-out evaluation excluded), its ratio to the VAE's, and the last held-out
ELBO. Keep it short on shared cores; ``--threads`` sets torch's thread count.

    python benchmarks/bench_zoo.py [--epochs 2] [--models vae,vamp,hvae,iaf,vae@gated]
        [--dataset mnist-5k] [--threads 1] [--device cpu]

A model written ``SPEC@NET`` trains with ``net=NET`` (e.g. ``vae@gated``).
"""

from __future__ import annotations

import argparse
import statistics

import torch

import pyrovae

DEFAULT_MODELS = "vae,vae@gated,vamp,vamp:components=50,hvae,iaf"


def time_model(entry: str, args: argparse.Namespace, data: pyrovae.Dataset) -> dict:
    spec, _, net = entry.partition("@")
    run = pyrovae.train(model=spec, data=data, dataset=args.dataset, epochs=args.epochs,
                        device=args.device, progress=False, figures=False, **({"net": net} if net else {}))
    seconds = statistics.median(row["seconds"] for row in run.metrics)
    return {"model": entry, "s_per_epoch": seconds, "test_elbo": run.metrics[-1]["test_elbo"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = pyrovae.load_dataset(args.dataset)
    rows = [time_model(m, args, data) for m in args.models.split(",") if m]
    base = next((r["s_per_epoch"] for r in rows if r["model"] == "vae"), rows[0]["s_per_epoch"])
    print(f"{args.dataset}, {args.epochs} epochs, {args.threads} thread(s), {args.device}")
    print(f"{'model':<22} {'s/epoch':>8} {'x vae':>6} {'test ELBO':>10}")
    for r in rows:
        print(f"{r['model']:<22} {r['s_per_epoch']:8.2f} {r['s_per_epoch'] / base:6.2f} "
              f"{r['test_elbo']:10.2f}")


if __name__ == "__main__":
    main()
