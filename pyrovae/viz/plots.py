"""Figures as matplotlib ``Figure`` objects (no global pyplot state), saved as PNG.

Each function takes plain data (metric rows, image tensors, codes), never a model or trainer. The
figures are :class:`InlineFigure` objects: a notebook shows them as images (``display(fig)`` or a
cell's last value) in Jupyter, VS Code and nbclient alike, without ``%matplotlib inline``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from pyrovae.errors import PyrovaeError

REPR_DPI = 72  # resolution of the PNG a notebook shows (and stores in its outputs)


class InlineFigure(Figure):
    """A matplotlib ``Figure`` with a PNG repr, so IPython front ends draw it as an image.

    A ``Figure`` built without pyplot has no repr but its text (``<Figure size ...>``) unless the
    kernel runs ``%matplotlib inline``; ``_repr_png_`` is the protocol every front end reads.
    """

    def _repr_png_(self) -> bytes:
        buffer = BytesIO()
        self.savefig(buffer, format="png", dpi=REPR_DPI, bbox_inches="tight")
        return buffer.getvalue()


def figure(**kwargs: Any) -> InlineFigure:
    """A new :class:`InlineFigure`; ``kwargs`` go to ``matplotlib.figure.Figure``."""
    return InlineFigure(**kwargs)


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically: a full disk leaves no partial file) and
    return the path."""
    from pyrovae import runs  # here: runs imports nothing of viz, viz is imported by the loop

    path = Path(path)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise runs.write_error(path, exc) from None
    runs.write_bytes(path, buffer.getbuffer())
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
    fig = figure(figsize=(5, 5 * grid.shape[0] / grid.shape[1] + 0.3))
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
    fig = figure(figsize=(6, 4))
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
    """Latent means ``(N, z_dim)`` in 2-D (the first two PCA components when ``z_dim > 2``).

    With fewer than 3 codes PCA is not meaningful (two points always lie on one component): the
    first two coordinates are drawn instead, and the title says so.
    """
    codes = loc.detach().cpu().reshape(len(loc), -1).numpy()
    n, z_dim = codes.shape
    axes = ("z[0]", "z[1]")
    title = "posterior means of held-out data"
    if z_dim > 2 and n >= 3:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(codes)
        codes = pca.transform(codes)
        ev = pca.explained_variance_ratio_
        axes = (f"PC 1 ({ev[0]:.0%} of variance)", f"PC 2 ({ev[1]:.0%})")
    elif z_dim > 2:
        codes = codes[:, :2]
        title = f"posterior means of {n} held-out example(s)\n(too few for PCA: the first two dimensions)"
    if z_dim == 1:
        codes = np.concatenate([codes, np.zeros_like(codes)], axis=1)
        axes = ("z[0]", "")
    fig = figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    size = 5 if n >= 100 else 30
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=size, alpha=0.7)
    else:
        c = labels.detach().cpu().numpy()
        classes = not labels.is_floating_point() and len(c) and 0 <= c.min() and c.max() <= 9
        span = {"vmin": -0.5, "vmax": 9.5} if classes else {}  # one tab10 colour per class 0..9
        points = ax.scatter(codes[:, 0], codes[:, 1], c=c, cmap="tab10", s=size, alpha=0.7, **span)
        bar = fig.colorbar(points, ax=ax, label="label")
        if classes:
            bar.set_ticks(range(10))
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10 if n >= 3 else 8)
    return fig


def plot_traversal(images: torch.Tensor, dims: Sequence[int], values: Sequence[float] | torch.Tensor,
                   title: str = "latent traversals", relative: bool = False) -> Figure:
    """A traversal grid: row ``k`` decodes the codes where dimension ``dims[k]`` takes ``values``.

    ``images``: ``(len(dims) * len(values), C, H, W)`` in [0, 1], row by row, as decoded from
    :func:`pyrovae.evaluation.latent_views.traversal` codes. Rows are labelled ``z_i``, columns with
    the value (``relative=True``: the offset added to the code's own value).
    """
    values = [float(v) for v in values]
    dims = [int(d) for d in dims]
    if len(images) != len(dims) * len(values):
        raise PyrovaeError(f"a traversal of {len(dims)} dimension(s) x {len(values)} value(s) needs "
                           f"{len(dims) * len(values)} images, got {len(images)}")
    pad = 1
    grid = image_grid(images, len(values), pad)
    h, w = images.shape[-2:]
    fig = figure(figsize=(5.5, 5.5 * grid.shape[0] / grid.shape[1] + 0.6))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(dims))], [f"z_{d}" for d in dims])
    shown = sorted({0, len(values) // 2, len(values) - 1})
    ax.set_xticks([pad + c * (w + pad) + w / 2 for c in shown], [f"{values[c]:+.3g}" for c in shown])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    what = "offset added to z_i" if relative else "value of z_i"
    ax.set_xlabel(f"{what}: {values[0]:+.3g} to {values[-1]:+.3g} in {len(values)} steps")
    ax.set_title(title)
    return fig
