"""The literature's density protocol on dynamically binarized Fashion-MNIST, one row of the table.

Protocol (as in Tomczak & Welling 2018 and the papers tabulated by Norouzi et al. 2020):

* 50,000 training images; 10,000 held out *from the training split* for validation (seeded);
  the test set is not seen until the end;
* training images re-binarized every epoch, Bernoulli likelihood, KL warm-up (linear over
  ``--warmup`` epochs);
* model selection and early stopping on the validation ELBO (``best.pt``, ``--patience``), within a
  training budget of ``--minutes`` (summed training time, evaluation excluded);
* the test set touched once: test NLL of the best checkpoint by importance sampling with
  K = ``--iwae-k`` (5000) on all 10,000 test images (binarized once, fixed seed), with its standard
  error over images; the per-image values are saved as ``test-log-px.pt`` in the run folder;
* for a model that assigns clusters (``gmvae``: ``model.assign``), the purity of its clusters on the
  same test images against their labels (``test_purity``).

Every step goes through the library (``pyrovae.train`` with callbacks, ``Dataset.validation``,
``load_best``, ``pyrovae.log_likelihood``). Rerunning with the same ``--out`` resumes an interrupted
run. ``--record FILE`` appends the row to a JSON list (``docs/results/density/results.json``).

    python benchmarks/bench_density.py --data-dir ../shared/data --model vae --estimator iwae:5 \
        --hidden 500,500 --z-dim 40 --minutes 60 --out runs/density-vae-iwae5 \
        --record docs/results/density/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

import pyrovae
from pyrovae.models.mixture import cluster_purity
from pyrovae.runs import CHECKPOINT
from pyrovae.training.callbacks import BestCheckpoint, EarlyStopping, TimeBudget, best_epoch, load_best
from pyrovae.training.loop import prepare_data

TEST_LOG_PX = "test-log-px.pt"  # in the run folder: the test images' log p(x), (n_test,) float64
PUBLISHED = {"VAE (Gaussian prior, MLP)": 228.70, "VampPrior (MLP)": 227.35,
             "Exemplar prior (MLP)": 226.75, "HVAE (convolutional)": 225.38}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("PYROVAE_DATA_DIR"))
    p.add_argument("--dataset", default="fashion-mnist", help="another set for smoke runs (digits)")
    p.add_argument("--model", default="vae", help="a built-in spec, e.g. vamp:components=500, hvae")
    p.add_argument("--estimator", default="iwae:5")
    p.add_argument("--net", default="mlp")
    p.add_argument("--hidden", default="500,500", help="dense hidden sizes")
    p.add_argument("--z-dim", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=60.0, help="training budget (training time)")
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=10, help="KL warm-up epochs (linear from 0 to 1)")
    p.add_argument("--patience", type=int, default=20, help="epochs without validation gain")
    p.add_argument("--val", type=int, default=10_000, help="validation images from the training split")
    p.add_argument("--iwae-k", type=int, default=5000)
    p.add_argument("--n-test", type=int, help="test images (default all); a full row uses all")
    p.add_argument("--eval-batch", type=int, default=50, help="test images per log p(x) call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="run folder (rerun to resume)")
    p.add_argument("--record", help="append the row to this JSON list")
    return p.parse_args(argv)


def row_key(row: dict) -> tuple:
    """What tells one row of the table from another; a run's ``config.json`` has the same fields."""
    return row["model"], row["estimator"], row["net"], tuple(row["hidden"]), row["z_dim"]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = pyrovae.load_dataset(args.dataset, args.data_dir)
    split = data.validation(args.val, seed=args.seed)
    out = Path(args.out)
    callbacks = [BestCheckpoint(), EarlyStopping(args.patience), TimeBudget(args.minutes)]
    config = dict(dataset=args.dataset, binarize="dynamic", likelihood="bernoulli", model=args.model,
                  estimator=args.estimator, net=args.net, hidden=[int(h) for h in args.hidden.split(",")],
                  z_dim=args.z_dim, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  epochs=args.max_epochs, kl_schedule=f"linear:epochs={args.warmup}")
    cpu0 = time.process_time()
    if (out / CHECKPOINT).is_file():
        run = pyrovae.load_run(out, data=split)
        if any(stop(run, run.metrics[-1]) for stop in callbacks[1:]):
            print(f"{out}: training already finished", flush=True)
        else:
            print(f"resuming {out}", flush=True)
            run = pyrovae.train(run_dir=out, data=split, resume=True, callbacks=callbacks, figures=False)
    else:
        run = pyrovae.train(run_dir=out, data=split, callbacks=callbacks, figures=False, **config)
    best = best_epoch(run)
    train_minutes = sum(r["seconds"] for r in run.metrics) / 60
    print(f"{len(run.metrics)} epochs, {train_minutes:.1f} training minutes; best validation ELBO "
          f"{run.metrics[best - 1]['test_elbo']:.2f} at epoch {best}", flush=True)

    # the test set, once: the best checkpoint, binarized as every held-out set (fixed seed)
    chosen = load_best(out, data=split)
    test = prepare_data(chosen.config, data)
    test_x = test.test_x[: args.n_test]
    pyro.set_rng_seed(args.seed)
    t0 = time.perf_counter()
    parts = []
    for i in tqdm(range(0, len(test_x), args.eval_batch), desc=f"test log p(x), K={args.iwae_k}",
                  unit="batch"):
        parts.append(pyrovae.log_likelihood(chosen.model, test_x[i:i + args.eval_batch], args.iwae_k))
    log_px = torch.cat(parts).double()
    torch.save(log_px, out / TEST_LOG_PX)  # per image, for paired differences between rows
    nll, se = -log_px.mean().item(), (log_px.std() / math.sqrt(len(log_px))).item()
    row = {
        "model": args.model, "estimator": args.estimator, "net": args.net, "hidden": config["hidden"],
        "z_dim": args.z_dim, "train_minutes": train_minutes, "epochs": len(run.metrics),
        "best_epoch": best, "val_elbo": run.metrics[best - 1]["test_elbo"], "test_nll": nll,
        "test_nll_se": se, "k": args.iwae_k, "n_test": len(log_px), "n_train": len(split.train_x),
        "n_val": len(split.test_x), "eval_minutes": (time.perf_counter() - t0) / 60,
        "cpu_minutes": (time.process_time() - cpu0) / 60, "threads": args.threads,
        "dataset": args.dataset, "torch": torch.__version__, "pyrovae": pyrovae.__version__,
    }
    if callable(getattr(chosen.model, "assign", None)) and test.test_y is not None:
        row["test_purity"] = cluster_purity(chosen.model, test_x, test.test_y[: args.n_test])
    print(json.dumps(row, indent=2))
    print("published (NLL, nats): " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    if args.record:
        record = Path(args.record)
        rows = json.loads(record.read_text()) if record.is_file() else []
        rows = [r for r in rows if row_key(r) != row_key(row)]
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps([*rows, row], indent=2) + "\n")
    return row


if __name__ == "__main__":
    main()
