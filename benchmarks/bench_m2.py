"""Semi-supervised classification on Fashion-MNIST: M2 against its classifier trained on the labels alone.

For each number of labels (100, 1,000 and all 60,000 by default; a class-balanced seeded subset,
:func:`pyrovae.data.labels.hide_labels`) this trains

* M2 (Kingma et al. 2014) through ``pyrovae.train`` on every training image, labelled or not, with
  estimator ``enum`` and dynamically binarized images, until its share of ``--minutes`` is spent
  (whole epochs, at least one);
* the same classifier network ``q(y|x)`` on the labelled images alone with plain cross-entropy
  (Adam, the same batch size, learning rate and number of steps; images binarized the same way);

and prints the held-out accuracy of both on the 10,000 test images (binarized once, seeded).

    python benchmarks/bench_m2.py --data-dir ../shared/data --minutes 60
    python benchmarks/bench_m2.py --data-dir ../shared/data --smoke   # a minute: checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

import pyrovae
from pyrovae.data.labels import hide_labels, labelled
from pyrovae.models.conditional import Classifier
from pyrovae.models.semisupervised import M2, classification_accuracy

REPO = Path(__file__).resolve().parents[1]


def _labels(text: str) -> list[int | None]:
    return [None if part.strip() == "all" else int(part) for part in text.split(",")]


def train_m2(data: pyrovae.Dataset, args: argparse.Namespace, seconds: float) -> tuple[M2, pyrovae.Run]:
    """M2 through the one training loop, stopped after the epoch that passes ``seconds``."""
    pyro.set_rng_seed(args.seed)
    model = M2(data.shape, z_dim=args.z_dim, hidden=args.hidden)

    def out_of_time(run: pyrovae.Run, row: dict) -> bool:
        return sum(r["seconds"] for r in run.metrics) >= seconds

    run = pyrovae.train(model=model, data=data, estimator="enum", binarize="dynamic",
                        epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        eval_held_out=False, progress=False, figures=False, callbacks=[out_of_time])
    return model, run


def train_classifier(data: pyrovae.Dataset, args: argparse.Namespace, steps: int) -> Classifier:
    """The M2 classifier's network on the labelled images alone: cross-entropy, ``steps`` Adam steps."""
    torch.manual_seed(args.seed)
    net = Classifier("mlp", data.shape, args.hidden, 10)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    x, y = data.train_x, data.train_y
    done = 0
    while done < steps:
        images = torch.bernoulli(x, generator=gen)  # dynamic binarization, as M2 sees them
        for index in torch.randperm(len(x), generator=gen).split(args.batch_size):
            optimizer.zero_grad()
            F.cross_entropy(net(images[index]), y[index]).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("PYROVAE_DATA_DIR", REPO.parent / "shared" / "data"))
    p.add_argument("--labels", default="100,1000,all", help="label counts, e.g. 100,1000,all")
    p.add_argument("--minutes", type=float, default=60.0, help="M2 training time, all label counts together")
    p.add_argument("--smoke", action="store_true",
                   help="2,000 training and 1,000 test images, small nets, one epoch")
    p.add_argument("--hidden", default="500", help="dense hidden sizes, e.g. 500 or 500,500")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", help="write the results as JSON to this file")
    args = p.parse_args(argv)
    args.hidden = [int(h) for h in args.hidden.split(",")]
    torch.set_num_threads(args.threads)

    data = pyrovae.load_dataset("fashion-mnist", args.data_dir)
    if args.smoke:
        data = data.subset(2000, 1000, seed=args.seed)
        args.hidden, args.z_dim, args.max_epochs = [64], 8, 1
    counts = [len(data.train_y) if n is None else n for n in _labels(args.labels)]
    seconds = args.minutes * 60 / len(counts)
    test_x = torch.bernoulli(data.test_x, generator=torch.Generator().manual_seed(1234))
    rows = []
    print(f"{'labels':>7} | {'M2':>6} | {'labels only':>11} | {'epochs':>6} | {'steps':>6} | M2 minutes")
    for n in counts:
        few = hide_labels(data, n, seed=args.seed)
        t0 = time.perf_counter()
        model, run = train_m2(few, args, seconds)
        minutes = (time.perf_counter() - t0) / 60
        steps = run.metrics[-1]["step"]
        baseline = train_classifier(labelled(few), args, steps)
        row = {"labels": n, "m2_accuracy": classification_accuracy(model, test_x, data.test_y),
               "classifier_accuracy": classification_accuracy(baseline, test_x, data.test_y),
               "epochs": len(run.metrics), "steps": steps, "m2_minutes": minutes,
               "train_loss": run.metrics[-1]["train_loss"]}
        rows.append(row)
        print(f"{n:>7} | {row['m2_accuracy']:6.3f} | {row['classifier_accuracy']:11.3f} | "
              f"{row['epochs']:>6} | {steps:>6} | {minutes:.2f}", flush=True)
    result = {"smoke": args.smoke, "train_n": len(data.train_y), "test_n": len(data.test_y),
              "hidden": args.hidden, "z_dim": args.z_dim, "batch_size": args.batch_size, "lr": args.lr,
              "seed": args.seed, "threads": args.threads, "torch": torch.__version__, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
