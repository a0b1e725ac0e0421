"""Estimators compared: gradient noise at fixed parameters, and training under one budget.

:func:`gradient_report` draws each estimator's gradient many times at the same parameters and
reports the mean gradient's norm, the variance and the
signal-to-noise ratio ``|E[g]| / std[g]`` (Rainforth et al., "Tighter variational bounds are not
necessarily better", ICML 2018), for the guide's and the model's parameters separately (the encoder
and decoder of a VAE). :func:`compare` trains the same network from the same seed with
each estimator under the same budget (epochs or training seconds), evaluates every run with the
same importance-sampled ``log p(x)``, and writes one table and two figures: ``log p(x)`` against
training time, and guide/model SNR against K for IWAE and DReG.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from matplotlib import ticker
from matplotlib.figure import Figure

from pyrovae import checks
from pyrovae.data.datasets import Dataset, binarize, load_dataset
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.diagnostics import gradient_stats, param_groups
from pyrovae.evaluation.metrics import Data, as_batch, elbo_terms, log_likelihood
from pyrovae.experiments.runner import ensure_run, pm, say, seed_dirs, summarise
from pyrovae.infer.registry import make_elbo
from pyrovae.models.contract import inspect_program, with_own_params
from pyrovae.runs import CHECKPOINT, read_jsonl, read_metrics, write_bytes, write_csv
from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import Run, train
from pyrovae.viz import plots

DEFAULT_ESTIMATORS = ("trace", "score", "stl", "iwae:5", "dreg:5")
DEFAULT_SNR_KS = (1, 3, 10, 30)
GROUPS = ("guide", "model")  # parameter groups: q's (the encoder) and p's (the decoder)
GRADIENT_COLUMNS = ["estimator", "guide_mean_norm", "guide_variance", "guide_snr",
                    "model_mean_norm", "model_variance", "model_snr", "seconds_per_step"]
COMPARE_COLUMNS = ["estimator", "run", "epochs", "test_elbo", "log_px", "iwae_k", "eval_n",
                   "active_units", "seconds_per_epoch", "train_seconds", "guide_snr", "model_snr"]
SUMMARISED = ["epochs", "test_elbo", "log_px", "active_units", "seconds_per_epoch", "train_seconds",
              "guide_snr", "model_snr"]
SUMMARY_COLUMNS = [*COMPARE_COLUMNS, "seeds", *(f"{m}_se" for m in SUMMARISED)]
SNR_COLUMNS = ["family", "k", "guide_snr", "model_snr"]


# ---- gradients at fixed parameters ---------------------------------------------------------------


def parse_estimators(text: str | Sequence[str]) -> list[str]:
    """Estimator specs from ``"trace,iwae:5,renyi:0.5,10"`` (a number after a comma continues the
    previous spec's arguments) or a list; each is checked with :func:`make_elbo`."""
    if isinstance(text, str):
        specs: list[str] = []
        if text.strip() and any(not p.strip() for p in text.split(",")):
            raise PyrovaeError(f"estimators {text!r} has an empty item: write e.g. trace,iwae:5")
        for part in (p.strip() for p in text.split(",")):
            if specs and ":" in specs[-1] and re.fullmatch(r"[-+.\deE]+", part or "x"):
                specs[-1] += f",{part}"
            elif part:
                specs.append(part)
    else:
        specs = [s.strip() for s in text]
    if not specs:
        raise PyrovaeError("no estimators given: write e.g. --estimators trace,score,iwae:5")
    dupes = sorted({s for s in specs if specs.count(s) > 1})
    if dupes:
        raise PyrovaeError(f"estimators listed twice: {dupes}")
    for spec in specs:
        make_elbo(spec)  # raises a clear PyrovaeError for unknown or malformed specs
    return specs


@with_own_params
def gradient_report(
    model: Any,
    x: Data,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    draws: int = 100,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each estimator's gradient of ``-bound`` drawn ``draws`` times at the current parameters.

    ``model``: any model (built-in or the user's); ``x``: one batch of its inputs (a tensor, or a
    tuple of tensors; binary images for a Bernoulli likelihood). Every estimator starts from the
    same seed. Parameters are left unchanged.

    :returns: one row per estimator: ``guide_``/``model_`` ``mean_norm`` (norm of the mean
        gradient), ``variance`` (mean per-coordinate variance) and ``snr`` (mean per-coordinate
        ``|E g| / std g``), and ``seconds_per_step`` (one ``loss_and_grads`` call). See
        :func:`pyrovae.diagnostics.gradient_stats`.
    """
    specs = parse_estimators(estimators)
    if not isinstance(draws, int) or draws < 2:
        raise PyrovaeError(f"draws must be a whole number >= 2 to estimate a variance, got {draws}")
    batch = as_batch(x)
    program = inspect_program(model, tuple(t[:2] for t in batch))
    groups = param_groups(model, batch)
    rows = []
    for spec in specs:
        elbo = make_elbo(spec, max_plate_nesting=program.max_plate_nesting)
        with pyro.validation_enabled(False):
            stats = gradient_stats(elbo, model.model, model.guide, batch, None, groups, draws, seed)
        row: dict[str, Any] = {"estimator": spec}
        for group in GROUPS:
            for key in ("mean_norm", "variance", "snr"):
                row[f"{group}_{key}"] = stats[group][key]
        row["seconds_per_step"] = stats["seconds_per_draw"]
        rows.append(row)
    return rows


def gradient_batch(run: Run, batch: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``batch`` training examples of a run drawn at random (seeded), binarized as in training."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise PyrovaeError(f"batch must be a whole number >= 1, got {batch}")
    inputs = run.data.inputs("train", run.inputs)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(inputs[0]), generator=gen)[:batch]
    inputs = tuple(t[pick.to(t.device)] for t in inputs)
    if run.config.binarize == "dynamic":
        x = binarize(inputs[0].cpu(), torch.Generator().manual_seed(seed)).to(inputs[0].device)
        inputs = (x, *inputs[1:])
    return inputs


def snr_vs_k(
    model: Any,
    x: Data,
    ks: Sequence[int] = DEFAULT_SNR_KS,
    families: Sequence[str] = ("iwae", "dreg"),
    draws: int = 100,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Guide (encoder) and model (decoder) SNR of ``family:K`` for each K, at the current parameters.

    Theory (Rainforth et al. 2018; Tucker et al. 2019): for large K, IWAE's encoder SNR falls like
    ``1/sqrt(K)`` and its decoder SNR rises like ``sqrt(K)``; DReG's encoder gradient has no such
    decay (both share the decoder gradient).
    """
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise PyrovaeError(f"K values must be whole numbers >= 1, got {list(ks)}")
    specs = [f"{f}:{k}" for f in families for k in ks]
    rows = gradient_report(model, x, specs, draws, seed)
    return [{"family": spec.split(":")[0], "k": int(spec.split(":")[1]),
             "guide_snr": r["guide_snr"], "model_snr": r["model_snr"]}
            for spec, r in zip(specs, rows, strict=True)]


# ---- training under one budget -------------------------------------------------------------------


BUDGET_LOG = "budget.jsonl"  # what on_epoch measured after each epoch, kept with the run


def train_budget(
    run_dir: str | os.PathLike,
    data: Dataset | None = None,
    epochs: int | None = None,
    seconds: float | None = None,
    on_epoch: Any = None,
    model: Any = None,
    progress: bool = False,
    label: str = "",
    **config: Any,
) -> tuple[Run, list[dict[str, Any]]]:
    """Train one run for ``epochs`` epochs, or until its training time reaches ``seconds``.

    The run always goes epoch by epoch through :func:`pyrovae.train` (``resume=True`` for each
    next epoch, which continues exactly), so ``on_epoch(run) -> dict`` can measure it after every
    epoch; its rows are kept in ``run_dir/budget.jsonl``. With ``seconds`` the last epoch is the one
    during which the summed training time (evaluation excluded) passed the budget: at least one
    epoch runs. A folder holding this run already (same settings) is continued, or returned as it
    is when the budget is spent, so an interrupted experiment picks up where it stopped.
    Returns the run and the measured rows (one per epoch).
    """
    check_budget(epochs, seconds)
    data = _load(data, config)
    run_dir = Path(run_dir)
    run, _ = ensure_run(run_dir, 1 if not (run_dir / CHECKPOINT).is_file() else len(read_metrics(run_dir)),
                        data=data, model=model, progress=progress, label=label, **config)
    user = None if model is None or isinstance(model, str) else run.model
    measured = [r for r in _read_budget(run_dir) if r["epoch"] <= len(run.metrics)]
    while True:
        done = len(run.metrics)
        if on_epoch is not None and (not measured or measured[-1]["epoch"] < done):
            row = {"epoch": done, **(on_epoch(run) or {})}
            with open(run_dir / BUDGET_LOG, "a") as f:
                f.write(json.dumps(row) + "\n")
            measured.append(row)
        spent = sum(r["seconds"] for r in run.metrics)
        if (epochs is not None and done >= epochs) or (seconds is not None and spent >= seconds):
            return run, measured
        left = f"/{epochs}" if epochs else f" ({spent:.0f} of {seconds:.0f} s spent)"
        say(progress, f"{label}: epoch {done + 1}{left}")
        run = train(run_dir=run_dir, data=data, model=user, resume=True, epochs=done + 1,
                    progress=False, figures=False)


def _read_budget(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / BUDGET_LOG)  # a line cut short by a crash: measured again


def _load(data: Dataset | None, config: dict[str, Any]) -> Dataset:
    """``data``, or the data set the training options name (loaded once, not binarized yet)."""
    if data is not None:
        return data
    return load_dataset(config.get("dataset") or TrainConfig.dataset, config.get("data_dir"))


def check_budget(epochs: int | None, seconds: float | None) -> None:
    """Exactly one of a whole number of epochs >= 1 or a positive number of seconds."""
    if (epochs is None) == (seconds is None):
        raise PyrovaeError(f"give exactly one budget: {checks.label('epochs')} N or "
                           f"{checks.label('seconds')} S")
    if epochs is not None:
        checks.whole(epochs, "epochs")
    if seconds is not None:
        checks.positive(seconds, "seconds")


def run_name(spec: str) -> str:
    """A folder name for an estimator spec: ``"iwae:5"`` -> ``"iwae-5"``."""
    return spec.replace(":", "-").replace(",", "_")


def compare(
    out: str | os.PathLike,
    estimators: Sequence[str] | str = DEFAULT_ESTIMATORS,
    epochs: int | None = None,
    seconds: float | None = None,
    data: Dataset | None = None,
    iwae_k: int = 1000,
    eval_n: int | None = None,
    curve_k: int = 100,
    draws: int = 100,
    grad_batch: int = 64,
    snr_ks: Sequence[int] = DEFAULT_SNR_KS,
    eval_seed: int = 0,
    model: Any = None,
    seeds: int = 1,
    progress: bool = False,
    **config: Any,
) -> list[dict[str, Any]]:
    """Train one run per estimator (and seed) under the same budget; evaluate, tabulate, plot.

    ``model``: a built-in name (default the config's), or a zero-argument function that builds a
    fresh user model (called once per estimator after seeding with the config's ``seed``, so every
    estimator starts from the same weights). ``config`` holds the shared training options (dataset,
    net, hidden, z_dim, batch_size, lr, seed...). Each run (``out/<estimator>``) is evaluated on
    ``eval_n`` held-out examples drawn at random with ``eval_seed`` (all by default): held-out
    ELBO, active units (both from the run's last metrics row with all examples), ``log p(x)`` with
    ``iwae_k`` importance samples, and ``log p(x)`` with ``curve_k`` samples after every epoch (the
    time curve). ``guide_snr``/``model_snr`` are the run's own
    estimator's gradient SNRs at its final parameters (``draws`` draws on ``grad_batch`` training
    images); the SNR-against-K figure is measured at the first run's final parameters.

    ``seeds``: runs per estimator, with seeds ``seed, seed + 1, ...`` (the config's ``seed``), in
    ``out/<estimator>/seed-<s>``; the table gives each metric's mean over seeds and its standard
    error (``<metric>_se``), the per-seed rows go to ``compare_runs.csv``. A finished run found in its
    folder is reused and an interrupted one resumed, never retrained. ``progress`` prints a line per
    run and epoch on standard error.

    Writes ``compare.csv``, ``compare.md``, ``compare_runs.csv``, ``curves.csv`` (the first seed's),
    ``snr_vs_k.csv`` and ``figures/{loglik_vs_time,snr_vs_k}.png`` under ``out``; returns the table
    rows.
    """
    specs = parse_estimators(estimators)
    check_budget(epochs, seconds)
    checks.whole(iwae_k, "iwae_k")
    checks.whole(curve_k, "curve_k")
    if eval_n is not None:
        checks.whole(eval_n, "eval_n")
    if "estimator" in config or "particles" in config:
        raise PyrovaeError("set the estimators (with their K) through estimators=, not estimator=")
    if model is not None and not isinstance(model, (str, type)) and hasattr(model, "model"):
        raise PyrovaeError("compare trains a fresh model per estimator, from the same weights: pass "
                           "a class or a function that builds one, e.g. model=lambda: MyModel(), "
                           "not a model object")
    out = Path(out)
    data = _load(data, config)  # once, for every run
    seed = int(config.pop("seed", 0))
    per_seed, curves, first = [], {}, None
    for i, spec in enumerate(specs, 1):
        for s, run_dir in seed_dirs(out / run_name(spec), seed, seeds):
            label = f"[{i}/{len(specs)}] {spec} seed {s}"
            run, curve = _compare_run(run_dir, spec, s, model, data, epochs, seconds, eval_n,
                                      eval_seed, curve_k, progress, label, config)
            first = run if first is None else first
            curves.setdefault(spec, [{k: p[k] for k in ("epoch", "seconds", "log_px")} for p in curve])
            say(progress, f"{label}: evaluating (log p(x) with K={iwae_k}, {draws} gradient draws)")
            x = eval_inputs(run, eval_n, eval_seed)
            pyro.set_rng_seed(eval_seed)
            log_px = log_likelihood(run.model, x, iwae_k).mean().item()
            grads = gradient_report(run.model, gradient_batch(run, grad_batch, eval_seed), [spec],
                                    draws, eval_seed)[0]
            last = run.metrics[-1]
            train_seconds = sum(r["seconds"] for r in run.metrics)
            per_seed.append({
                "estimator": spec, "run": run_name(spec), "seed": s, "epochs": len(run.metrics),
                "test_elbo": last["test_elbo"] if eval_n is None else elbo_at(run.model, x, eval_seed),
                "log_px": log_px, "iwae_k": iwae_k, "eval_n": len(x[0]),
                "active_units": last["active_units"],
                "seconds_per_epoch": train_seconds / len(run.metrics), "train_seconds": train_seconds,
                "guide_snr": grads["guide_snr"], "model_snr": grads["model_snr"],
            })
    rows = summarise(per_seed, ["estimator"], SUMMARISED)
    say(progress, f"SNR against K at the first run's final parameters ({first.run_dir})")
    snr_rows = snr_vs_k(first.model, gradient_batch(first, grad_batch, eval_seed), snr_ks,
                        draws=draws, seed=eval_seed)
    write_compare(rows, curves, snr_rows, out, per_seed)
    figures = out / "figures"
    plots.save(plot_loglik_vs_time(curves, rows), figures / "loglik_vs_time.png")
    plots.save(plot_snr_vs_k(snr_rows), figures / "snr_vs_k.png")
    return rows


def _compare_run(run_dir: Path, spec: str, seed: int, model: Any, data: Dataset, epochs: int | None,
                 seconds: float | None, eval_n: int | None, eval_seed: int, curve_k: int,
                 progress: bool, label: str, config: dict[str, Any]) -> tuple[Run, list[dict[str, Any]]]:
    """One estimator's run with one seed, and its log p(x) curve (``curve_k`` samples per epoch)."""

    def measure(run: Run) -> dict[str, float]:
        x = eval_inputs(run, eval_n, eval_seed)
        pyro.set_rng_seed(eval_seed)
        return {"seconds": sum(r["seconds"] for r in run.metrics),
                "log_px": log_likelihood(run.model, x, curve_k).mean().item()}

    instance = model
    if isinstance(model, type) or (callable(model) and not isinstance(model, str)
                                   and not hasattr(model, "model")):
        pyro.set_rng_seed(seed)
        instance = model()
    return train_budget(run_dir, data, epochs, seconds, measure, model=instance, progress=progress,
                        label=label, estimator=spec, seed=seed, **config)


def eval_inputs(run: Run, n: int | None, seed: int) -> tuple[torch.Tensor, ...]:
    """``n`` held-out examples of a run drawn at random with ``seed`` (all of them for ``None``):
    some data sets are stored sorted by class, so the first ``n`` would all be one class."""
    inputs = run.data.inputs("test", run.inputs)
    if n is None or n >= len(inputs[0]):
        return inputs
    pick = torch.randperm(len(inputs[0]), generator=torch.Generator().manual_seed(seed))[:n]
    return tuple(t[pick.sort().values.to(t.device)] for t in inputs)


def elbo_at(model: Any, x: Data, seed: int) -> float:
    """Held-out ELBO (one draw per example, closed-form KL where valid) on ``x``, seeded."""
    pyro.set_rng_seed(seed)
    return elbo_terms(model, x)["elbo"]


# ---- tables and figures --------------------------------------------------------------------------


def gradient_markdown(rows: list[dict[str, Any]]) -> str:
    """The gradient report as a Markdown table."""
    lines = ["| estimator | guide ‖E g‖ | guide var | guide SNR | model ‖E g‖ | "
             "model var | model SNR | ms / step |", "| --- " * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['guide_mean_norm']:.3g} | "
                     f"{r['guide_variance']:.3g} | {r['guide_snr']:.3f} | "
                     f"{r['model_mean_norm']:.3g} | {r['model_variance']:.3g} | "
                     f"{r['model_snr']:.3f} | {1000 * r['seconds_per_step']:.1f} |")
    return "\n".join(lines) + "\n"


def write_gradients(rows: list[dict[str, Any]], out: str | os.PathLike) -> None:
    """``gradients.csv`` and ``gradients.md`` in ``out``."""
    out = Path(out)
    write_csv(out / "gradients.csv", GRADIENT_COLUMNS, rows)
    write_bytes(out / "gradients.md", gradient_markdown(rows).encode())


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (mean ± standard error over seeds where there are several)."""
    k = rows[0]["iwae_k"] if rows else "K"
    lines = [f"| estimator | seeds | epochs | held-out ELBO | log p(x), K={k} | active units | s / epoch "
             "| guide SNR | model SNR |", "| --- " * 9 + "|"]
    formats = {"epochs": ".3g", "test_elbo": ".2f", "log_px": ".2f", "active_units": ".3g",
               "seconds_per_epoch": ".2f", "guide_snr": ".3f", "model_snr": ".3f"}
    for r in rows:
        cells = [pm(r[m], r.get(f"{m}_se"), spec) for m, spec in formats.items()]
        lines.append(f"| {r['estimator']} | {r.get('seeds', 1)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("SNR columns: each run's own estimator, measured at the run's final parameters "
                 "(`pyrovae gradients` measures at the parameters of the run it is given, so its "
                 "numbers differ unless it is given the same run).")
    return "\n".join(lines) + "\n"


def write_compare(rows: list[dict[str, Any]], curves: dict[str, list[dict[str, float]]],
                  snr_rows: list[dict[str, Any]], out: Path,
                  per_seed: list[dict[str, Any]] | None = None) -> None:
    """``compare.csv`` (means and standard errors), ``compare_runs.csv`` (per seed), ``compare.md``,
    ``curves.csv`` and ``snr_vs_k.csv`` in ``out``."""
    write_csv(out / "compare.csv", SUMMARY_COLUMNS, rows)
    if per_seed is not None:
        write_csv(out / "compare_runs.csv", [*COMPARE_COLUMNS[:2], "seed", *COMPARE_COLUMNS[2:]], per_seed)
    write_bytes(out / "compare.md", compare_markdown(rows).encode())
    flat = [{"estimator": spec, **point} for spec, points in curves.items() for point in points]
    write_csv(out / "curves.csv", ["estimator", "epoch", "seconds", "log_px"], flat)
    write_csv(out / "snr_vs_k.csv", SNR_COLUMNS, snr_rows)


def plot_loglik_vs_time(curves: dict[str, list[dict[str, float]]],
                        rows: list[dict[str, Any]] | None = None) -> Figure:
    """Held-out ``log p(x)`` (curve K after each epoch) against cumulative training seconds;
    a star marks each run's final estimate with the table's K. The axis spans the bulk of the
    curves: a run that ends far below them (a diverging score-function run) is named, not drawn."""
    fig = plots.figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    values = sorted(p["log_px"] for points in curves.values() for p in points)
    top = max(values + [r["log_px"] for r in rows or []], default=0.0)
    bottom = top - 4 * max(top - values[len(values) // 2], 1.0) if values else -1.0
    for i, (spec, points) in enumerate(curves.items()):
        color, label = f"C{i}", spec
        if points and points[-1]["log_px"] < bottom:
            label = f"{spec} (off scale: {min(p['log_px'] for p in points):.0f})"
        ax.plot([p["seconds"] for p in points], [p["log_px"] for p in points], marker=".",
                color=color, label=label)
        for r in rows or []:
            if r["estimator"] == spec:
                ax.scatter([r["train_seconds"]], [r["log_px"]], marker="*", s=80, color=color)
                se = r.get("log_px_se")
                if se is not None and math.isfinite(se):  # standard error over seeds
                    ax.errorbar([r["train_seconds"]], [r["log_px"]], yerr=[se], color=color, capsize=3)
    ax.set_ylim(bottom, top + 0.05 * (top - bottom))
    ax.set_xlabel("training time (s, evaluation excluded)")
    ax.set_ylabel("held-out log p(x) (nats)")
    ax.set_title("importance-sampled log-likelihood along training (*: final, table K)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


STYLES = (("o", "-", 7), ("s", "--", 5), ("^", ":", 5), ("D", "-.", 4))  # marker, line, size


def plot_snr_vs_k(rows: list[dict[str, Any]]) -> Figure:
    """Guide (encoder) and model (decoder) gradient SNR against K (log-log), one line per family.

    Each family has its own marker and line style, later ones smaller and hollow, so a curve drawn
    over an earlier one leaves it visible; curves that coincide (IWAE and DReG share the decoder
    gradient) are named in a note. Ticks are the K values and plain numbers on a 1-2-5 grid.
    """
    fig = plots.figure(figsize=(10, 4.2), layout="constrained")
    axes = {"guide": fig.add_subplot(1, 2, 1), "model": fig.add_subplot(1, 2, 2)}
    families = list(dict.fromkeys(r["family"] for r in rows))
    curves = {f: sorted((r["k"], r) for r in rows if r["family"] == f) for f in families}
    for i, family in enumerate(families):
        marker, line, size = STYLES[i % len(STYLES)]
        face = f"C{i}" if i == 0 else "none"
        for group, ax in axes.items():
            ax.plot([k for k, _ in curves[family]], [r[f"{group}_snr"] for _, r in curves[family]],
                    marker=marker, ls=line, ms=size, color=f"C{i}", mfc=face, label=family)
    ks = sorted({r["k"] for r in rows})
    for group, ax in axes.items():
        _log_axes(ax, ks, [r[f"{group}_snr"] for r in rows])
        ax.set_xlabel("K (importance samples)")
        ax.set_ylabel(f"{group} SNR, mean |E g| / std g")
        ax.set_title(f"{group} parameters ({'q, the encoder' if group == 'guide' else 'p, the decoder'})")
        ax.legend(fontsize=8)
        same = _coinciding(curves, f"{group}_snr")
        if same:
            ax.text(0.02, 0.02, "; ".join(" = ".join(g) for g in same) + ": equal values, the curves overlap",
                    transform=ax.transAxes, fontsize=8, va="bottom")
    return fig


def _coinciding(curves: dict[str, list], key: str) -> list[list[str]]:
    """Groups of families whose curves have the same K values and (to 1e-6) the same ``key``."""
    def same(a: list, b: list) -> bool:
        return len(a) == len(b) and all(ka == kb and math.isclose(ra[key], rb[key], rel_tol=1e-6)
                                        for (ka, ra), (kb, rb) in zip(a, b, strict=True))

    groups: list[list[str]] = []
    for family, points in curves.items():
        match = next((g for g in groups if same(curves[g[0]], points)), None)
        if match is None:
            groups.append([family])
        else:
            match.append(family)
    return [g for g in groups if len(g) > 1]


def _log_axes(ax: Any, ks: list[int], values: list[float]) -> None:
    """Log-log axes with readable ticks: the K values on x, a 1-2-5 grid of plain numbers on y
    wide enough to label at least two ticks (matplotlib's default labels few or none, as 2x10^-1)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(ticker.FixedLocator(ks))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    subs: tuple[float, ...] = (1.0, 2.0, 5.0)
    if positive:
        lo, hi = _grid_below(min(positive)), _grid_above(max(positive))
        ax.set_ylim(lo, hi)
        if hi / lo < 5:  # a narrow range: label every 1..9 x 10^e
            subs = tuple(float(m) for m in range(1, 10))
            ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3, which="major")


def _grid_below(v: float) -> float:
    """The largest number of the 1-2-5 grid strictly below ``v``."""
    e = math.floor(math.log10(v))
    return max(m * 10.0 ** d for d in (e - 1, e) for m in (1, 2, 5) if m * 10.0 ** d < v)


def _grid_above(v: float) -> float:
    """The smallest number of the 1-2-5 grid strictly above ``v``."""
    e = math.floor(math.log10(v))
    return min(m * 10.0 ** d for d in (e, e + 1) for m in (1, 2, 5) if m * 10.0 ** d > v)
