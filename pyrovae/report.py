"""The standard figures of a run: losses, reconstructions, prior samples, latent map."""

from __future__ import annotations

from pathlib import Path

import torch

from . import plots
from .runs import FIGURES
from .vae import encode


def save_run_figures(run, n_images: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write ``figures/{losses,reconstructions,samples,latents}.png`` of a :class:`~pyrovae.training.Run`."""
    folder = Path(run.run_dir) / FIGURES
    vae, x = run.vae, run.data.test_x
    vae.eval()
    figs = {}
    if run.metrics:
        figs["losses"] = plots.plot_losses(run.metrics)
    figs["reconstructions"] = plots.plot_reconstructions(x[:16], vae.reconstruct(x[:16]))
    gen = torch.Generator().manual_seed(seed)
    figs["samples"] = plots.plot_images(vae.sample(n_images, gen), "samples from the prior")
    loc = encode(vae, x)[0]
    figs["latents"] = plots.plot_latents(loc, run.data.test_y)
    return {name: plots.save(fig, folder / f"{name}.png") for name, fig in figs.items()}
