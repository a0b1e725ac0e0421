"""Figures for the toy. They take tensors and records (never a trainer) and return
``matplotlib.figure.Figure`` objects built without pyplot, so they work under any backend and leave
no global figure state behind; a notebook shows them as images (:class:`pyrovae.viz.plots.InlineFigure`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyrovae.experiments.toy import exact
from pyrovae.viz.plots import figure

COLORS = {"trace": "tab:red", "tracegraph": "tab:orange", "enum": "tab:blue", "EM": "tab:green"}


def _color(name: str, i: int) -> str:
    return COLORS.get(name, f"C{i % 10}")


def mixture_density(grid: torch.Tensor, p: float, sigma: float) -> torch.Tensor:
    """``p(x)`` of the toy on ``grid`` (shape ``(m,)``), in 1/units of x."""
    return exact.log_marginal(grid, p, sigma).exp()


def plot_mixture_fit(
    x: torch.Tensor,
    true: tuple[float, float],
    fitted: Mapping[str, tuple[float, float]],
    bins: int = 40,
) -> Figure:
    """Histogram of data ``x`` (shape ``(n,)``) with the true and fitted densities.

    ``true`` and each value of ``fitted`` are ``(p, sigma)``; ``fitted`` is keyed by a label
    (an estimator name, "EM").
    """
    x = x.detach().to(torch.float64)
    pad = 3 * max([true[1], *(s for _, s in fitted.values())])
    grid = torch.linspace(float(x.min()) - pad / 3, float(x.max()) + pad / 3, 400, dtype=x.dtype)
    fig = figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    label = f"data, n={len(x)}"
    ax.hist(x.numpy(), bins=bins, density=True, color="0.85", edgecolor="0.6", label=label)
    ax.plot(grid, mixture_density(grid, *true), "k--", lw=2, label=_pair_label("true", *true))
    for i, (name, (p, s)) in enumerate(fitted.items()):
        ax.plot(
            grid,
            mixture_density(grid, p, s),
            color=_color(name, i),
            lw=1.3,
            label=_pair_label(name, p, s),
        )
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title("data and the mixture (1-p) N(0, sigma) + p N(1, sigma)")
    ax.legend(fontsize="small")
    return fig


def plot_training(records: Iterable[Mapping], em_loglik: float | None = None) -> Figure:
    """Exact log-likelihood (solid) and ELBO (dashed) per point along training, per estimator.

    ``records`` are rows as written to ``metrics.jsonl`` (keys ``estimator``, ``step``,
    ``exact_loglik``, ``exact_elbo``, nats per point); ``em_loglik`` is the EM optimum per point.
    The right panel shows the gap ``log p(x) - ELBO = mean KL(q(z|x) || p(z|x))`` on a log scale.
    """
    by_estimator: dict[str, list[Mapping]] = {}
    for row in records:
        by_estimator.setdefault(str(row["estimator"]), []).append(row)
    fig = figure(figsize=(10.0, 4.0), layout="constrained")
    ax, ax_gap = fig.subplots(1, 2)
    lows = []
    for i, (name, rows) in enumerate(by_estimator.items()):
        steps = [r["step"] for r in rows]
        ll = [r["exact_loglik"] for r in rows]
        el = [r["exact_elbo"] for r in rows]
        c = _color(name, i)
        ax.plot(steps, ll, color=c, lw=1.5, label=f"{name}: log p(x)")
        ax.plot(steps, el, color=c, lw=1.0, ls="--", label=f"{name}: ELBO")
        gap = [max(a - b, 1e-12) for a, b in zip(ll, el, strict=True)]
        ax_gap.plot(steps, gap, color=c, lw=1.2, label=name)
        lows.append(ll[min(len(ll) - 1, len(ll) // 10)])
    if em_loglik is not None:
        ax.axhline(em_loglik, color="k", lw=0.8, ls=":", label="EM optimum")
        # zoom on the part of training where estimators differ; the start is far below
        if lows:
            ax.set_ylim(min(lows) - 0.02, em_loglik + 0.02)
    ax.set_xlabel("step")
    ax.set_ylabel("nats per data point")
    ax.set_title("exact log-likelihood and ELBO")
    ax.legend(fontsize="x-small", ncol=2)
    ax_gap.set_yscale("log")
    ax_gap.set_xlabel("step")
    ax_gap.set_ylabel("log p(x) - ELBO, nats per point")
    ax_gap.set_title("gap = mean KL(q(z|x) || p(z|x))")
    ax_gap.legend(fontsize="small")
    return fig


def plot_posterior(
    fits: Mapping[str, Mapping[str, float]],
    reference: tuple[float, float],
    x: torch.Tensor | None = None,
    span: tuple[float, float] = (-1.5, 2.5),
) -> Figure:
    """Each guide's ``q(z=1|x) = sigmoid(guide_w x + guide_b)`` against the exact posterior.

    ``fits`` maps a label to a dict with ``p``, ``sigma``, ``guide_w``, ``guide_b`` (a final
    record); each guide is drawn solid and the exact posterior under that fit's own
    ``(p, sigma)`` dotted. ``reference = (p, sigma)`` gives the black posterior (e.g. the true
    parameters). ``x``, if given, is drawn as a rug.
    """
    lo, hi = span
    if x is not None:
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    grid = torch.linspace(lo, hi, 400, dtype=torch.float64)
    fig = figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(
        grid,
        exact.posterior_prob(grid, *reference),
        "k--",
        lw=2,
        label=_pair_label("p(z=1|x), true", *reference),
    )
    for i, (name, f) in enumerate(fits.items()):
        c = _color(name, i)
        q = torch.sigmoid(f["guide_w"] * grid + f["guide_b"])
        ax.plot(grid, q, color=c, lw=1.5, label=f"{name}: q(z=1|x)")
        ax.plot(
            grid,
            exact.posterior_prob(grid, f["p"], f["sigma"]),
            color=c,
            lw=1,
            ls=":",
            label=f"{name}: exact p(z=1|x) at its fit",
        )
    if x is not None:
        ax.plot(x.detach().numpy(), [-0.03] * len(x), "|", color="0.5", ms=6, alpha=0.4)
    ax.set_xlabel("x")
    ax.set_ylabel("probability that z = 1")
    ax.set_title("guide q(z=1|x) and the exact posterior")
    ax.legend(fontsize="x-small")
    return fig


def save_figures(figures: Mapping[str, Figure], folder: str | os.PathLike) -> list[Path]:
    """Save each figure as ``<folder>/<name>.png``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _pair_label(name: str, p: float, sigma: float) -> str:
    return f"{name} (p={float(p):.3f}, sigma={float(sigma):.3f})"
