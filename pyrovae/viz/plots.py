"""Figures as matplotlib ``Figure`` objects (no global pyplot state), saved as PNG.

Each function takes plain data (metric rows, image tensors, codes), never a model or trainer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` in [0, 1] into one ``(rows*H, cols*W[, C])`` array."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    grid = grid.permute(1, 2, 0).numpy()
    return grid[..., 0] if c == 1 else grid


def plot_images(images: torch.Tensor, title: str = "", nrow: int | None = None) -> Figure:
    """One grid of images ``(N, C, H, W)``."""
    grid = image_grid(images, nrow)
    fig = Figure(figsize=(5, 5 * grid.shape[0] / grid.shape[1] + 0.3))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def plot_reconstructions(x: torch.Tensor, x_rec: torch.Tensor, n: int = 16) -> Figure:
    """Inputs (top row of each pair) above their reconstructions (bottom row)."""
    n = min(n, len(x))
    cols = min(n, 8)
    pairs = []
    for start in range(0, n, cols):
        pairs += [x[start:start + cols], x_rec[start:start + cols]]
    return plot_images(torch.cat(pairs), "inputs (odd rows) and reconstructions (even rows)", cols)


def plot_losses(rows: Sequence[dict]) -> Figure:
    """Train loss and held-out negative ELBO per example (nats) against epoch."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss (-ELBO)")
    if all(r.get("test_elbo") is not None for r in rows):
        ax.plot(epochs, [-r["test_elbo"] for r in rows], marker="s", label="held-out -ELBO")
    else:  # an auto-encoder: its loss is the reconstruction term alone
        ax.plot(epochs, [-r["test_recon"] for r in rows], marker="s",
                label="held-out reconstruction loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_latents(loc: torch.Tensor, labels: torch.Tensor | None = None) -> Figure:
    """Latent means ``(N, z_dim)`` in 2-D (the first two PCA components when ``z_dim > 2``)."""
    codes = loc.detach().cpu().numpy()
    axes = ("z[0]", "z[1]")
    if codes.shape[1] > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(codes)
        codes = pca.transform(codes)
        ev = pca.explained_variance_ratio_
        axes = (f"PC 1 ({ev[0]:.0%} of variance)", f"PC 2 ({ev[1]:.0%})")
    elif codes.shape[1] == 1:
        codes = np.concatenate([codes, np.zeros_like(codes)], axis=1)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=5, alpha=0.7)
    else:
        points = ax.scatter(codes[:, 0], codes[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=5,
                            alpha=0.7)
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title("posterior means of held-out data")
    return fig
