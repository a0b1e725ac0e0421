"""The density table from the rows of ``bench_density.py``: a Markdown table and two figures.

Reads the rows (``docs/results/density/results.json``, a JSON list) and, for the figures, the
rows' run folders (``--runs``; each folder's ``config.json`` names its model and estimator):

* ``table.md``: one line per row, best first, next to the published NLLs on the same protocol;
* ``nll-vs-minutes.png``: the validation negative ELBO of each run against its training minutes
  (the curve model selection saw), with the row's test NLL (K = 5000, +- one standard error) as a
  point at the end: the test set is touched once per row, so it gives one point, not a curve;
* ``samples.png``: 64 prior samples (pixel means) of each row's best checkpoint.

    python benchmarks/density_report.py --runs runs/density-* --out docs/results/density
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import pyrovae
from pyrovae import runs
from pyrovae.training.callbacks import load_best
from pyrovae.viz import plots

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_density import PUBLISHED, row_key  # noqa: E402  (one place for the numbers and the key)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="docs/results/density/results.json")
    p.add_argument("--runs", nargs="*", default=[], help="the rows' run folders (for the figures)")
    p.add_argument("--out", default="docs/results/density")
    return p.parse_args(argv)


def labeller(rows: list[dict]):
    """A short label per row: model and estimator, plus the network fields that differ between rows."""
    varying = [f for f in ("net", "hidden", "z_dim") if len({str(r[f]) for r in rows}) > 1]

    def label(row: dict) -> str:
        extra = {"net": row["net"], "hidden": "-".join(map(str, row["hidden"])), "z_dim": f"z {row['z_dim']}"}
        return ", ".join([row["model"], row["estimator"], *(extra[f] for f in varying)])
    return label


def table(rows: list[dict]) -> str:
    """The rows as Markdown, lowest test NLL first, then the published numbers."""
    lines = ["| model | estimator | hidden | z | training minutes | epochs (best) | test NLL (nats) "
             "| K, test images |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["test_nll"]):
        lines.append(f"| `{r['model']}` | `{r['estimator']}` | {','.join(map(str, r['hidden']))} "
                     f"({r['net']}) | {r['z_dim']} | {r['train_minutes']:.1f} ({r['threads']} "
                     f"thread{'s' if r['threads'] != 1 else ''}) | {r['epochs']} ({r['best_epoch']}) | "
                     f"**{r['test_nll']:.2f} ± "
                     f"{r['test_nll_se']:.2f}** | {r['k']:,}, {r['n_test']:,} |")
    for name, nll in PUBLISHED.items():
        lines.append(f"| {name}, published | | | | | | {nll:.2f} | 5,000, 10,000 |")
    return "\n".join(lines) + "\n"


def curve_figure(rows: list[dict], folders: dict[tuple, Path]):
    fig = plots.figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    name = labeller(rows)
    for r in sorted(rows, key=lambda r: tuple(map(str, row_key(r)))):
        label = name(r)
        folder = folders.get(row_key(r))
        color = None
        if folder is not None:
            metrics = runs.read_metrics(folder)[: r["epochs"]]
            minutes = torch.tensor([m["seconds"] for m in metrics]).cumsum(0) / 60
            (line,) = ax.plot(minutes, [-m["test_elbo"] for m in metrics], lw=1,
                              label=f"{label}: validation -ELBO")
            color = line.get_color()
        ax.errorbar([r["train_minutes"]], [r["test_nll"]], yerr=[r["test_nll_se"]], fmt="o", color=color,
                    capsize=3, label=f"{label}: test NLL, K={r['k']:,}")
    for (name, nll), style in zip(PUBLISHED.items(), [":", "--", "-.", (0, (1, 3))], strict=True):
        ax.axhline(nll, color="gray", lw=0.8, ls=style, label=f"{name} {nll}")
    best = min(r["test_nll"] for r in rows)
    ax.set_ylim(best - 6, best + 20)
    ax.set_xlabel("training minutes")
    ax.set_ylabel("nats per image")
    ax.set_title("dynamically binarized Fashion-MNIST")
    ax.legend(fontsize=7, loc="upper right")
    return fig


def samples_figure(rows: list[dict], folders: dict[tuple, Path]):
    chosen = [r for r in sorted(rows, key=lambda r: r["test_nll"]) if row_key(r) in folders]
    name = labeller(rows)
    cols = min(3, len(chosen))
    fig = plots.figure(figsize=(3.3 * cols, 3.6 * math.ceil(len(chosen) / cols)))
    for i, r in enumerate(chosen):
        run = load_best(folders[row_key(r)], data=False)
        images = pyrovae.sample(run.model, 64, seed=0)
        ax = fig.add_subplot(math.ceil(len(chosen) / cols), cols, i + 1)
        ax.imshow(plots.image_grid(images, 8), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{name(r)}: {r['test_nll']:.1f}", fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    rows = json.loads(Path(args.results).read_text())
    if not rows:
        raise SystemExit(f"{args.results} holds no rows: run benchmarks/bench_density.py first")
    folders = {}
    for folder in map(Path, args.runs):
        folders[row_key(runs.read_config(folder))] = folder
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    runs.write_bytes(out / "table.md", text.encode())
    plots.save(curve_figure(rows, folders), out / "nll-vs-minutes.png")
    if any(row_key(r) in folders for r in rows):
        plots.save(samples_figure(rows, folders), out / "samples.png")
    print(text)
    return text


if __name__ == "__main__":
    main()
