"""The standard figures of a run: losses, reconstructions, prior samples, latent map.

Figures that do not apply to a model are left out: reconstructions and samples need image-shaped
observations ``(C, H, W)`` in [0, 1], the latent map a guide with one continuous latent site.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyrovae.evaluation.generate import encode, reconstruct, sample
from pyrovae.runs import FIGURES
from pyrovae.viz import plots


def _images(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.shape[1] in (1, 3)


def save_run_figures(run, n_images: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write ``figures/{losses,reconstructions,samples,latents}.png`` of a :class:`~pyrovae.training.Run`.

    Reconstructions show 16 held-out examples drawn at random (seeded), not the first ones: some
    data sets are stored sorted by class.
    """
    folder = Path(run.run_dir) / FIGURES
    model = run.model
    batch = run.data.inputs("test", run.inputs)
    pick = torch.randperm(len(batch[0]), generator=torch.Generator().manual_seed(seed))[:16]
    shown = tuple(t[pick.to(t.device)] for t in batch)
    figs = {}
    if run.metrics:
        figs["losses"] = plots.plot_losses(run.metrics)
    program = run.program
    if program is not None and len(program.observed) == 1 and _images(shown[0]):
        figs["reconstructions"] = plots.plot_reconstructions(shown[0], reconstruct(model, shown))
        like = tuple(t[:1] for t in batch)
        images = sample(model, n_images, seed=seed, like=like)
        if _images(images):
            figs["samples"] = plots.plot_images(images, "samples from the prior")
    if program is not None and len(program.latent) == 1 and not program.discrete:
        loc = encode(model, batch)[0]
        figs["latents"] = plots.plot_latents(loc, run.data.test_y)
    return {name: plots.save(fig, folder / f"{name}.png") for name, fig in figs.items()}
