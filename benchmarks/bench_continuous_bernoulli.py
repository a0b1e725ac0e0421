"""The continuous-Bernoulli likelihood before and after the logit-form density, on the same weights.

Trains the default small VAE on ``digits`` with ``likelihood="continuous-bernoulli"`` (once with the
stable density of :class:`pyrovae.nn.likelihoods.ContinuousBernoulliLogits`, once with torch's
``ContinuousBernoulli``, whose normaliser is computed from clamped probabilities), then evaluates
each trained model's held-out ELBO and ``log p(x)`` under both densities, and the fraction of
decoded pixel logits (posterior-mean codes of the test images) with ``|logit| > 15.9``, where
float32's ``sigmoid`` rounds to 0 or 1 and torch's normaliser stops following the logit.

    python benchmarks/bench_continuous_bernoulli.py --epochs 30 --iwae-k 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator

import pyro
import torch

import pyrovae
from pyrovae.nn import likelihoods


class TorchContinuousBernoulli(likelihoods.ContinuousBernoulli):
    """The old likelihood: torch's ``ContinuousBernoulli(logits=out)``, for comparison only."""

    def distribution(self, out):
        return pyro.distributions.ContinuousBernoulli(logits=out)

    def mean(self, out):
        return pyro.distributions.ContinuousBernoulli(logits=out).mean


@contextlib.contextmanager
def old_density() -> Iterator[None]:
    """Within the block, ``build_likelihood("continuous-bernoulli")`` builds the old likelihood."""
    name = likelihoods.ContinuousBernoulli.name
    new = likelihoods.LIKELIHOODS[name]
    likelihoods.LIKELIHOODS[name] = TorchContinuousBernoulli
    try:
        yield
    finally:
        likelihoods.LIKELIHOODS[name] = new


def large_logit_fraction(vae, x: torch.Tensor, bound: float = 15.9) -> float:
    with torch.no_grad():
        logits = vae.decoder(vae.encoder(x)[0])
    return (logits.abs() > bound).double().mean().item()


def summary(vae, x: torch.Tensor, iwae_k: int) -> dict[str, float]:
    """Held-out ELBO and log p(x) under the new and the old density, same weights, same seed."""
    row = {"large_logits": large_logit_fraction(vae, x)}
    trained = vae.likelihood
    for label, lik in (("new", likelihoods.ContinuousBernoulli()), ("old", TorchContinuousBernoulli())):
        vae.likelihood = lik
        result = pyrovae.evaluate(vae, x, iwae_k=iwae_k, seed=0)
        row[f"elbo_{label}"], row[f"log_px_{label}"] = result["elbo"], result["log_px"]
    vae.likelihood = trained
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iwae-k", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = pyrovae.load_dataset("digits")
    rows = {}
    for trained_with, scope in (("new", contextlib.nullcontext), ("old", old_density)):
        start = time.perf_counter()
        with scope():
            run = pyrovae.train(dataset="digits", data=data, likelihood="continuous-bernoulli",
                                epochs=args.epochs, seed=args.seed, progress=False, figures=False)
        row = summary(run.model, data.test_x, args.iwae_k)
        row["train_seconds"] = time.perf_counter() - start
        rows[f"trained with {trained_with}"] = row
        print(f"trained with the {trained_with} density ({args.epochs} epochs, seed {args.seed}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    print(json.dumps({"epochs": args.epochs, "iwae_k": args.iwae_k, "n_test": len(data.test_x),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
