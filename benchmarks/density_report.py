"""The density table from the rows of ``bench_density.py``: a Markdown table and two figures.

Reads the rows (``docs/results/density/results.json``, a JSON list) and the run folders given
with ``--runs`` (each folder's ``config.json`` says which row it is). What the figures need of a run
is kept beside the table, so a row keeps its curve and samples after its run folder is gone:
``curves/SLUG.csv`` (epoch, training minutes, validation ELBO), ``samples/SLUG.png`` (64 prior
samples, pixel means, of the best checkpoint) and, where the run saved them, ``log_px/SLUG.npy``
(the test images' ``log p(x)``), one per row, rewritten when its folder is given.

* ``table.md``: one line per row, best first, next to the published NLLs on the same protocol;
  then, for the rows with per-image values, each one's NLL difference from the best of them with
  the standard error of the per-image difference (the rows share the test images, so this error
  is far smaller than either row's own);
* ``nll-vs-minutes.png``: the validation negative ELBO of each run against its training minutes
  (the curve model selection saw), with the row's test NLL (K = 5000, +- one standard error) as a
  point at the end: the test set is touched once per row, so it gives one point, not a curve;
* ``samples.png``: the rows' sample grids, best row first.

    python benchmarks/density_report.py --runs runs/density-* --out docs/results/density
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib import image as mpimg

import pyrovae
from pyrovae import runs
from pyrovae.training.callbacks import load_best
from pyrovae.viz import plots

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_density import PUBLISHED, TEST_LOG_PX, row_key  # noqa: E402  (one place for these)


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


def paired(rows: list[dict], out: Path) -> list[tuple[dict, float, float]]:
    """``(row, NLL difference from the best row, its standard error)`` for the rows whose per-image
    ``log p(x)`` are kept under ``out``, best first; the error is that of the mean per-image
    difference on the shared test images. Empty with fewer than two such rows."""
    files = ((r, out / "log_px" / f"{slug(r)}.npy") for r in sorted(rows, key=lambda r: r["test_nll"]))
    kept = [(r, np.load(path, allow_pickle=False)) for r, path in files if path.is_file()]
    if len(kept) < 2 or len({len(values) for _, values in kept}) > 1:
        return []
    best = kept[0][1]
    # per image: NLL of the row minus NLL of the best
    return [(r, float((best - values).mean()), float((best - values).std(ddof=1) / math.sqrt(len(best))))
            for r, values in kept]


def table(rows: list[dict], out: Path | None = None) -> str:
    """The rows as Markdown, lowest test NLL first, then the published numbers; with ``out``, the
    paired differences of :func:`paired`."""
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
    pairs = paired(rows, out) if out is not None else []
    if pairs:
        name = labeller(rows)
        lines += ["", f"Paired on the same test images, test NLL above {name(pairs[0][0])} (nats, ± the "
                  "standard error of the per-image difference): " + "; ".join(
                      f"{name(r)} +{d:.2f} ± {se:.2f}" for r, d, se in pairs[1:]) + "."]
    clustered = [r for r in rows if r.get("test_purity") is not None]
    if clustered:
        name = labeller(rows)
        lines += ["", "Cluster purity of `argmax_c q(c | x)` on the test images: " + "; ".join(
            f"{name(r)} {r['test_purity']:.3f}" for r in clustered) + "."]
    return "\n".join(lines) + "\n"


def slug(row: dict) -> str:
    """A file name for the row, from its key, with characters other than letters, digits and dots
    replaced: ``vamp:components=50``, ``iwae:5``, gated, hidden 300,300, z 40 give
    ``vamp_components_50-iwae_5-gated-300x300-z40``."""
    model, estimator, net, hidden, z_dim = row_key(row)
    return "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", part)
                    for part in (model, estimator, net, "x".join(map(str, hidden)), f"z{z_dim}"))


def export(row: dict, folder: Path, out: Path) -> None:
    """Keep what the figures and the paired differences need of ``row``'s run ``folder`` under
    ``out``: the validation curve of the epochs the row trained, 64 prior samples of its best
    checkpoint, and the test images' ``log p(x)`` where the run saved them."""
    metrics = runs.read_metrics(folder)[: row["epochs"]]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["epoch", "minutes", "val_elbo"])
    minutes = 0.0
    for m in metrics:
        minutes += m["seconds"] / 60
        writer.writerow([m["epoch"], f"{minutes:.4f}", f"{m['test_elbo']:.4f}"])
    (out / "curves").mkdir(parents=True, exist_ok=True)
    runs.write_bytes(out / "curves" / f"{slug(row)}.csv", text.getvalue().encode())
    run = load_best(folder, data=False)
    grid = plots.image_grid(pyrovae.sample(run.model, 64, seed=0), 8)
    png = io.BytesIO()
    mpimg.imsave(png, grid, cmap="gray", vmin=0, vmax=1, format="png")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    runs.write_bytes(out / "samples" / f"{slug(row)}.png", png.getvalue())
    if (folder / TEST_LOG_PX).is_file():
        values = io.BytesIO()
        np.save(values, torch.load(folder / TEST_LOG_PX, weights_only=True).numpy(), allow_pickle=False)
        (out / "log_px").mkdir(parents=True, exist_ok=True)
        runs.write_bytes(out / "log_px" / f"{slug(row)}.npy", values.getvalue())


def read_curve(path: Path) -> tuple[list[float], list[float]]:
    """Training minutes and validation -ELBO of a curve file written by :func:`export`."""
    with open(path, newline="") as f:
        points = list(csv.DictReader(f))
    return [float(p["minutes"]) for p in points], [-float(p["val_elbo"]) for p in points]


def curve_figure(rows: list[dict], out: Path):
    fig = plots.figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    name = labeller(rows)
    for r in sorted(rows, key=lambda r: tuple(map(str, row_key(r)))):
        label = name(r)
        path = out / "curves" / f"{slug(r)}.csv"
        color = None
        if path.is_file():
            (line,) = ax.plot(*read_curve(path), lw=1, label=f"{label}: validation -ELBO")
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


def samples_figure(rows: list[dict], out: Path):
    """The sample grids kept for the rows, best row first; ``None`` when no row has one."""
    chosen = [r for r in sorted(rows, key=lambda r: r["test_nll"])
              if (out / "samples" / f"{slug(r)}.png").is_file()]
    if not chosen:
        return None
    name = labeller(rows)
    cols = min(3, len(chosen))
    fig = plots.figure(figsize=(3.3 * cols, 3.6 * math.ceil(len(chosen) / cols)))
    for i, r in enumerate(chosen):
        ax = fig.add_subplot(math.ceil(len(chosen) / cols), cols, i + 1)
        ax.imshow(mpimg.imread(out / "samples" / f"{slug(r)}.png"), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{name(r)}:\n{r['test_nll']:.2f} nats", fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    rows = json.loads(Path(args.results).read_text())
    if not rows:
        raise SystemExit(f"{args.results} holds no rows: run benchmarks/bench_density.py first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_key = {row_key(r): r for r in rows}
    for folder in map(Path, args.runs):
        key = row_key(runs.read_config(folder))
        if key in by_key:
            export(by_key[key], folder, out)
        else:
            print(f"{folder}: its row is not in {args.results} yet (rerun bench_density.py with --record); "
                  "left out", file=sys.stderr)
    text = table(rows, out)
    runs.write_bytes(out / "table.md", text.encode())
    plots.save(curve_figure(rows, out), out / "nll-vs-minutes.png")
    samples = samples_figure(rows, out)
    if samples is not None:
        plots.save(samples, out / "samples.png")
    print(text)
    return text


if __name__ == "__main__":
    main()
