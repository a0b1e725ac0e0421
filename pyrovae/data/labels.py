"""Labels for semi-supervised learning: hide all but a few training labels (``-1`` = unknown)."""

from __future__ import annotations

import torch

from pyrovae import checks
from pyrovae.data.datasets import Dataset
from pyrovae.errors import PyrovaeError

__all__ = ["UNKNOWN", "hide_labels", "labelled"]

UNKNOWN = -1  # the label of an example whose class is not given


def hide_labels(dataset: Dataset, n_labelled: int, seed: int = 0) -> Dataset:
    """A copy of ``dataset`` whose training labels are ``-1`` except for ``n_labelled`` of them.

    The kept ones are a seeded, class-balanced subset: ``n_labelled // K`` per class for ``K``
    classes, the remainder going to as many classes drawn at random (a class with fewer examples
    than its share keeps all of them, and the others share the rest). Images and held-out labels are
    unchanged (they measure the accuracy); ``n_labelled = len(train_x)`` keeps every label.
    """
    y = dataset.train_y
    if y is None:
        raise PyrovaeError(f"{dataset.name} has no training labels to hide: pass a Dataset with train_y")
    if y.dtype.is_floating_point or y.dtype == torch.bool or (len(y) and int(y.min()) < 0):
        raise PyrovaeError(f"{dataset.name}: train_y must hold class labels 0..K-1, got dtype {y.dtype}"
                           f"{'' if not len(y) else f' and values from {int(y.min())}'}")
    n = checks.whole(n_labelled, "n_labelled", minimum=0)
    if not len(y):
        raise PyrovaeError(f"{dataset.name} has no training examples")
    if n > len(y):
        raise PyrovaeError(f"{checks.label('n_labelled')} = {n} is more than the {len(y)} training "
                           "examples of " + dataset.name)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    cpu = y.cpu()
    present, sizes = torch.unique(cpu, return_counts=True)
    keep = []
    for label, k in zip(present.tolist(), _quotas(n, sizes, gen).tolist(), strict=True):
        members = (cpu == label).nonzero().flatten()
        keep.append(members[torch.randperm(len(members), generator=gen)[:k]])
    hidden = torch.full_like(cpu, UNKNOWN)
    index = torch.cat(keep)
    hidden[index] = cpu[index]
    return Dataset(dataset.name, dataset.train_x, dataset.test_x, hidden.to(y.device), dataset.test_y)


def _quotas(n: int, sizes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """How many labels to keep per class: ``n`` spread evenly over the classes, a class with too few
    examples giving all it has and its share to the others; a remainder goes to random classes."""
    quota = torch.zeros_like(sizes)
    remaining = n
    while remaining > 0:
        open_ = (quota < sizes).nonzero().flatten()
        share = remaining // len(open_)
        if share == 0:
            quota[open_[torch.randperm(len(open_), generator=gen)[:remaining]]] += 1
            break
        add = torch.minimum(sizes[open_] - quota[open_], torch.tensor(share))
        quota[open_] += add
        remaining -= int(add.sum())
    return quota


def labelled(dataset: Dataset) -> Dataset:
    """The training examples whose label is known (``y >= 0``), held-out data unchanged."""
    if dataset.train_y is None:
        raise PyrovaeError(f"{dataset.name} has no training labels")
    known = dataset.train_y >= 0
    return Dataset(dataset.name, dataset.train_x[known], dataset.test_x, dataset.train_y[known],
                   dataset.test_y)
