"""The rate-distortion experiment: one VAE trained at several betas and with each KL schedule.

Every run goes through :func:`pyrovae.training.train` with the same data, network and seed; the
results are one table (CSV and Markdown) and three figures: the rate-distortion plane (KL against
reconstruction), active units against beta, and the KL along training with and without annealing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pyrovae.data.datasets import Dataset
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.runner import ensure_run, pm, seed_dirs, summarise
from pyrovae.runs import write_bytes, write_csv
from pyrovae.viz import plots

DEFAULT_BETAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_SCHEDULES = ("linear", "cyclical", "sigmoid")
METRICS = ("test_elbo", "test_recon", "test_kl", "active_units")
COLUMNS = ["run", "beta", "kl_schedule", *METRICS, "seconds_per_epoch"]
SUMMARY_COLUMNS = [*COLUMNS, "seeds", *(f"{m}_se" for m in (*METRICS, "seconds_per_epoch"))]


def schedule_run_name(spec: str) -> str:
    """A folder name for a schedule spec, unique per spec: ``"cyclical:cycles=4"`` ->
    ``"schedule-cyclical-cycles=4"``."""
    return "schedule-" + spec.strip().replace(":", "-").replace(",", "_").replace(" ", "")


def sweep(
    out: str | os.PathLike,
    betas: Sequence[float] = DEFAULT_BETAS,
    schedules: Sequence[str] = DEFAULT_SCHEDULES,
    schedule_beta: float = 1.0,
    data: Dataset | None = None,
    progress: bool = False,
    seeds: int = 1,
    **config: Any,
) -> list[dict[str, Any]]:
    """Train one run per beta (constant schedule) and one per schedule (target ``schedule_beta``),
    each with ``seeds`` seeds (from the config's ``seed``).

    ``config`` holds the shared training options (dataset, epochs, net...). Runs go to
    ``out/beta-<b>`` and ``out/schedule-<spec>`` (``.../seed-<s>`` with several seeds); a finished
    run is reused, an interrupted one resumed. The table goes to ``out/sweep.{csv,md}`` (the mean and
    standard error over seeds; per-seed rows in ``out/sweep_runs.csv``) and the figures to
    ``out/figures/``. Returns the table rows.
    """
    if not betas and not schedules:
        raise PyrovaeError("a sweep needs at least one beta or one schedule")
    out = Path(out)
    plan = [(f"beta-{b:g}", b, "constant") for b in betas]
    plan += [(schedule_run_name(s), schedule_beta, s) for s in schedules]
    names = [name for name, _, _ in plan]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PyrovaeError(f"the sweep lists the same run twice: {dupes}")
    epochs = config.pop("epochs", None)
    seed = int(config.pop("seed", 0))
    per_seed, curves = [], {}
    for i, (name, beta, schedule) in enumerate(plan, 1):
        for s, run_dir in seed_dirs(out / name, seed, seeds):
            run, _ = ensure_run(run_dir, epochs, data=data, progress=progress,
                                label=f"[{i}/{len(plan)}] {name} seed {s}", beta=beta,
                                kl_schedule=schedule, seed=s, **config)
            data = run.data if data is None else data  # load once, reuse for every run
            last = run.metrics[-1]
            per_seed.append({
                "run": name, "seed": s, "beta": beta, "kl_schedule": schedule,
                **{k: last[k] for k in METRICS},
                "seconds_per_epoch": sum(r["seconds"] for r in run.metrics) / len(run.metrics),
            })
            curves.setdefault(name, run.metrics)  # the first seed's curve
    rows = summarise(per_seed, ["run"], [*METRICS, "seconds_per_epoch"])
    write_csv(out / "sweep_runs.csv", ["run", "seed", *COLUMNS[1:]], per_seed)
    write_table(rows, out)
    figures = out / "figures"
    plots.save(plot_rate_distortion(rows), figures / "rate_distortion.png")
    beta_rows = [r for r in rows if r["kl_schedule"] == "constant"]
    if beta_rows:
        plots.save(plot_active_units(beta_rows), figures / "active_units.png")
    annealed = {k: v for k, v in curves.items() if k.startswith("schedule-")}
    flat = {k: v for k, v in curves.items() if k == f"beta-{schedule_beta:g}"}
    if annealed:
        plots.save(plot_kl_curves({**flat, **annealed}), figures / "kl_curves.png")
    return rows


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    """``sweep.csv`` and ``sweep.md`` with one row per run (mean ± standard error over seeds)."""
    write_csv(out / "sweep.csv", SUMMARY_COLUMNS, rows)
    lines = ["| run | beta | KL schedule | seeds | held-out ELBO | reconstruction | KL | active units "
             "| s / epoch |", "| --- " * 9 + "|"]
    for r in rows:
        cells = [pm(r[m], r.get(f"{m}_se"), ".2f") for m in (*METRICS, "seconds_per_epoch")]
        lines.append(f"| {r['run']} | {r['beta']:g} | {r['kl_schedule']} | {r['seeds']} | "
                     + " | ".join(cells) + " |")
    write_bytes(out / "sweep.md", ("\n".join(lines) + "\n").encode())


def plot_rate_distortion(rows: list[dict[str, Any]]) -> Figure:
    """Rate (KL, nats) against distortion (negative reconstruction log-likelihood, nats).

    Runs are named in a legend, not beside their points: neighbouring runs (annealed runs end near
    beta = 1) would write their labels over each other. Constant-beta runs are joined in beta order.
    """
    fig = plots.figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    flat = sorted((r for r in rows if r["kl_schedule"] == "constant"), key=lambda r: r["beta"])
    _rate_distortion_errors(ax, rows)
    if len(flat) > 1:
        ax.plot([r["test_kl"] for r in flat], [-r["test_recon"] for r in flat], color="0.7", lw=1,
                zorder=1)
    for i, r in enumerate(flat + [r for r in rows if r["kl_schedule"] != "constant"]):
        constant = r["kl_schedule"] == "constant"
        label = f"β={r['beta']:g}" if constant else f"{r['kl_schedule'].split(':')[0]} (β→{r['beta']:g})"
        color = f"C{i % 10}"  # annealed runs hollow: one near a constant-beta point leaves it visible
        ax.scatter(r["test_kl"], -r["test_recon"], marker="o" if constant else "^", s=45 if constant else 60,
                   color=color, facecolors=color if constant else "none", label=label, zorder=2)
    ax.set_xlabel("rate: KL(q(z|x) || p(z)) (nats)")
    ax.set_ylabel("distortion: -E_q log p(x|z) (nats)")
    ax.set_title("held-out rate and distortion (o: constant β, ^: annealed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig


def _rate_distortion_errors(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Standard-error bars over seeds, where the rows have them."""
    for r in rows:
        xerr, yerr = r.get("test_kl_se"), r.get("test_recon_se")
        if xerr is not None and yerr is not None and math.isfinite(xerr) and math.isfinite(yerr):
            ax.errorbar(r["test_kl"], -r["test_recon"], xerr=xerr, yerr=yerr, color="0.4", lw=0.8,
                        capsize=2, zorder=1.5)


def plot_active_units(rows: list[dict[str, Any]]) -> Figure:
    """Active latent units against beta (log scale)."""
    fig = plots.figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    errors = [r.get("active_units_se") for r in rows]
    errors = [e if e is not None and math.isfinite(e) else 0.0 for e in errors]
    ax.errorbar([r["beta"] for r in rows], [r["active_units"] for r in rows], yerr=errors, marker="o",
                capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("β")
    ax.set_ylabel("active units (Var_x E_q[z_d] > 0.01)")
    ax.grid(alpha=0.3)
    return fig


def plot_kl_curves(curves: dict[str, list[dict[str, Any]]]) -> Figure:
    """Held-out KL and the schedule's beta along training, one line per run."""
    fig = plots.figure(figsize=(10, 4), layout="constrained")
    ax_kl, ax_beta = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, rows in curves.items():
        epochs = [r["epoch"] for r in rows]
        ax_kl.plot(epochs, [r["test_kl"] for r in rows], marker=".", label=name)
        ax_beta.plot(epochs, [r["beta"] for r in rows], marker=".", label=name)
    ax_kl.set_xlabel("epoch")
    ax_kl.set_ylabel("held-out KL (nats)")
    ax_beta.set_xlabel("epoch")
    ax_beta.set_ylabel("β at the end of the epoch")
    for ax in (ax_kl, ax_beta):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
