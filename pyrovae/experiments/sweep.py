"""The rate-distortion experiment: one VAE trained at several betas and with each KL schedule.

Every run goes through :func:`pyrovae.training.train` with the same data, network and seed; the
results are one table (CSV and Markdown) and three figures: the rate-distortion plane (KL against
reconstruction), active units against beta, and the KL along training with and without annealing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pyrovae.data.datasets import Dataset
from pyrovae.errors import PyrovaeError
from pyrovae.runs import write_csv
from pyrovae.training.loop import train
from pyrovae.viz import plots

DEFAULT_BETAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_SCHEDULES = ("linear", "cyclical", "sigmoid")
COLUMNS = ["run", "beta", "kl_schedule", "test_elbo", "test_recon", "test_kl", "active_units",
           "seconds_per_epoch"]


def sweep(
    out: str | os.PathLike,
    betas: Sequence[float] = DEFAULT_BETAS,
    schedules: Sequence[str] = DEFAULT_SCHEDULES,
    schedule_beta: float = 1.0,
    data: Dataset | None = None,
    progress: bool = False,
    **config: Any,
) -> list[dict[str, Any]]:
    """Train one run per beta (constant schedule) and one per schedule (target ``schedule_beta``).

    ``config`` holds the shared training options (dataset, epochs, net...). Runs go to
    ``out/beta-<b>`` and ``out/schedule-<name>``; the table to ``out/sweep.{csv,md}`` and the
    figures to ``out/figures/``. Returns the table rows.
    """
    if not betas and not schedules:
        raise PyrovaeError("a sweep needs at least one beta or one schedule")
    out = Path(out)
    plan = [(f"beta-{b:g}", b, "constant") for b in betas]
    plan += [(f"schedule-{s.split(':')[0]}", schedule_beta, s) for s in schedules]
    rows, curves = [], {}
    for name, beta, schedule in plan:
        run = train(run_dir=out / name, data=data, beta=beta, kl_schedule=schedule, overwrite=True,
                    progress=progress, figures=False, **config)
        data = run.data if data is None else data  # load once, reuse for every run
        last = run.metrics[-1]
        rows.append({
            "run": name, "beta": beta, "kl_schedule": schedule,
            **{k: last[k] for k in ("test_elbo", "test_recon", "test_kl", "active_units")},
            "seconds_per_epoch": sum(r["seconds"] for r in run.metrics) / len(run.metrics),
        })
        curves[name] = run.metrics
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
    """``sweep.csv`` and ``sweep.md`` with one row per run."""
    write_csv(out / "sweep.csv", COLUMNS, rows)
    lines = ["| run | beta | KL schedule | held-out ELBO | reconstruction | KL | active units "
             "| s / epoch |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['beta']:g} | {r['kl_schedule']} | {r['test_elbo']:.2f} | "
                     f"{r['test_recon']:.2f} | {r['test_kl']:.2f} | {r['active_units']} | "
                     f"{r['seconds_per_epoch']:.2f} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")


def plot_rate_distortion(rows: list[dict[str, Any]]) -> Figure:
    """Rate (KL, nats) against distortion (negative reconstruction log-likelihood, nats).

    Runs are named in a legend, not beside their points: neighbouring runs (annealed runs end near
    beta = 1) would write their labels over each other. Constant-beta runs are joined in beta order.
    """
    fig = plots.figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    flat = sorted((r for r in rows if r["kl_schedule"] == "constant"), key=lambda r: r["beta"])
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


def plot_active_units(rows: list[dict[str, Any]]) -> Figure:
    """Active latent units against beta (log scale)."""
    fig = plots.figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    ax.plot([r["beta"] for r in rows], [r["active_units"] for r in rows], marker="o")
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
