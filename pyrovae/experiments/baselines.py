"""The auto-encoder baselines experiment: AE, DAE and VAE with the same networks, every sampler.

For each model the table reports the held-out reconstruction error and, for each sampler, the
classifier-based quality of generated images (:mod:`pyrovae.quality`) beside the same numbers for
real held-out images. Figures: a sample grid per (model, sampler) and interpolation grids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyrovae import checks
from pyrovae.data.datasets import Dataset, load_dataset
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.generate import encode, sample
from pyrovae.evaluation.latent_views import interpolate
from pyrovae.evaluation.quality import CLASSIFIER, cached_classifier, sample_quality
from pyrovae.evaluation.samplers import SAMPLER_NAMES, sample_codes
from pyrovae.experiments.runner import ensure_run
from pyrovae.models.vae import VAE
from pyrovae.runs import write_bytes, write_csv
from pyrovae.viz import plots

MODELS = ("ae", "dae", "vae")
COLUMNS = ["model", "sampler", "recon_mse", "test_recon", "mean_confidence", "class_entropy",
           "score", "nn_distance"]


def interpolation_grid(vae: VAE, x: torch.Tensor, pairs: int = 4, steps: int = 10,
                       mode: str = "linear") -> torch.Tensor:
    """Decoded interpolations between held-out pairs ``(x[2i], x[2i+1])``: ``(pairs*steps, C, H, W)``."""
    loc, _ = encode(vae, x[: 2 * pairs])
    rows = [interpolate(loc[2 * i], loc[2 * i + 1], steps, mode) for i in range(pairs)]
    return vae.decode(torch.cat(rows))


def compare_models(
    out: str | os.PathLike,
    models: Sequence[str] = MODELS,
    samplers: Sequence[str] = SAMPLER_NAMES,
    n_samples: int = 1000,
    data: Dataset | None = None,
    seed: int = 0,
    progress: bool = False,
    **config: Any,
) -> list[dict[str, Any]]:
    """Train each of ``models`` with the shared ``config`` and score each sampler's images.

    A finished run found in ``out/<model>`` is reused, an interrupted one resumed. Writes
    ``out/<model>/`` run folders, ``out/classifier.pt``, ``out/baselines.{csv,md}`` and
    ``out/figures/``; returns the table rows (the first is real held-out images, ``model="data"``).
    """
    unknown = sorted(set(samplers) - set(SAMPLER_NAMES))
    if unknown:
        raise PyrovaeError(f"unknown sampler(s) {unknown}: choose from {', '.join(SAMPLER_NAMES)}")
    if n_samples < 1:
        raise PyrovaeError(f"{checks.label('n_samples')} must be >= 1, got {n_samples}")
    out = Path(out)
    if data is None:
        data = load_dataset(config.get("dataset", "mnist-5k"), config.get("data_dir"))
    if data.train_y is None:
        raise PyrovaeError(f"{data.name} has no labels: the quality classifier needs them")
    clf = cached_classifier(out / CLASSIFIER, data.train_x, data.train_y, seed=seed)
    figures = out / "figures"
    real = data.test_x[:n_samples]
    rows = [{"model": "data", "sampler": "held-out images", "recon_mse": None, "test_recon": None,
             **_quality(clf, real, data.train_x)}]
    gen = torch.Generator().manual_seed(seed)
    epochs = config.pop("epochs", None)
    for i, model in enumerate(models, 1):
        run, _ = ensure_run(out / model, epochs, data=data, model=model, progress=progress,
                            label=f"[{i}/{len(models)}] {model}", seed=seed, **config)
        vae, test_x = run.vae.eval(), run.data.test_x
        recon_mse = ((vae.reconstruct(test_x) - test_x) ** 2).mean().item()
        loc, scale = encode(vae, run.data.train_x)
        for name in samplers:
            draw_seed = int(torch.randint(2**31 - 1, (), generator=gen))
            if name == "prior":  # the model's own prior, run without observations
                images = sample(vae, n_samples, seed=draw_seed)
            else:
                torch.manual_seed(draw_seed)
                images = vae.decode(sample_codes(name, n_samples, loc, scale))
            plots.save(plots.plot_images(images[:64], f"{model}: {name} sampler"),
                       figures / f"samples-{model}-{name}.png")
            rows.append({"model": model, "sampler": name, "recon_mse": recon_mse,
                         "test_recon": run.metrics[-1]["test_recon"],
                         **_quality(clf, images, data.train_x)})
        plots.save(plots.plot_images(interpolation_grid(vae, test_x), f"{model}: interpolations",
                                     nrow=10), figures / f"interpolation-{model}.png")
    write_table(rows, out)
    return rows


def _quality(clf, images: torch.Tensor, train_x: torch.Tensor) -> dict[str, float]:
    q = sample_quality(clf, images.cpu(), train_x.cpu())
    return {k: q[k] for k in ("mean_confidence", "class_entropy", "score", "nn_distance")}


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    """``baselines.csv`` and ``baselines.md``."""
    write_csv(out / "baselines.csv", COLUMNS, rows)
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    lines = ["| model | sampler | held-out recon MSE | held-out recon log-lik | confidence "
             "| class entropy | IS-like score | NN distance |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sampler']} | {fmt(r['recon_mse'], '.4f')} | "
                     f"{fmt(r['test_recon'], '.2f')} | {r['mean_confidence']:.3f} | "
                     f"{r['class_entropy'] + 0.0:.3f} | {r['score']:.2f} | {r['nn_distance']:.3f} |")
    write_bytes(out / "baselines.md", ("\n".join(lines) + "\n").encode())
