"""Learning-rate schedules, gradient clipping, a validation split with early stopping and best.pt:
each resumed exactly."""

import pytest
import torch

import pyrovae
from pyrovae.errors import PyrovaeError
from pyrovae.training import distributed
from pyrovae.training.lr_schedules import parse_lr_schedule

SMALL = dict(dataset="digits", limit=300, hidden=[16], z_dim=2, batch_size=100, seed=0, progress=False,
             figures=False)


def test_lr_schedule_is_torchs_and_resumes_exactly(tmp_path, single_thread):
    spec = dict(lr=0.01, lr_schedule="step:every=1,gamma=0.5")
    straight = pyrovae.train(run_dir=tmp_path / "a", epochs=4, **spec, **SMALL)
    assert [r["lr"] for r in straight.metrics] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    pyrovae.train(run_dir=tmp_path / "b", epochs=2, **spec, **SMALL)
    resumed = pyrovae.train(run_dir=tmp_path / "b", resume=True, epochs=4, progress=False, figures=False)
    assert [r["lr"] for r in resumed.metrics] == [r["lr"] for r in straight.metrics]
    assert [r["test_elbo"] for r in resumed.metrics] == [r["test_elbo"] for r in straight.metrics]
    cosine = pyrovae.train(epochs=3, lr=0.01, lr_schedule="cosine", **SMALL)
    assert [r["lr"] for r in cosine.metrics] == pytest.approx([0.01, 0.0075, 0.0025])


@pytest.mark.parametrize("spec", ["step:every=0", "step:gamma=2", "nosuch", "cosine:every=2",
                                  "step:every=1,every=2", ""])
def test_bad_lr_schedules_are_one_error(spec):
    with pytest.raises(PyrovaeError, match="lr.schedule"):
        parse_lr_schedule(spec)


def test_clipping_bounds_the_global_gradient_norm():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0])  # norm 5
    distributed.GradientSum(distributed.Context(), [a, b], clip_norm=1.0)(torch.zeros(()))
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0)
    assert a.grad[0].item() == pytest.approx(0.6)  # one scale for all: the direction is kept
    a.grad, b.grad = torch.tensor([0.3, 0.0, 0.0]), torch.tensor([0.0, 0.4])
    distributed.GradientSum(distributed.Context(), [a, b], clip_norm=1.0)(torch.zeros(()))
    assert a.grad[0].item() == pytest.approx(0.3)  # under the bound: untouched


def test_clipping_changes_training_and_resumes_exactly(tmp_path, single_thread):
    free = pyrovae.train(epochs=2, **SMALL)
    clipped = pyrovae.train(run_dir=tmp_path / "a", epochs=2, clip_norm=0.1, **SMALL)
    assert clipped.metrics[-1]["test_elbo"] != free.metrics[-1]["test_elbo"]
    pyrovae.train(run_dir=tmp_path / "b", epochs=1, clip_norm=0.1, **SMALL)
    resumed = pyrovae.train(run_dir=tmp_path / "b", resume=True, epochs=2, progress=False, figures=False)
    assert [r["test_elbo"] for r in resumed.metrics] == [r["test_elbo"] for r in clipped.metrics]


def test_validation_split_selects_and_stops_without_the_test_set(tmp_path, single_thread):
    opts = dict(val_fraction=0.2, patience=2, lr=0.05, **SMALL)
    run = pyrovae.train(run_dir=tmp_path / "a", epochs=30, **opts)
    assert len(run.data.test_x) == 60  # 20% of the 300 training examples, not the test split
    assert len(run.data.train_x) == 240
    assert len(run.metrics) < 30  # stopped early
    best = pyrovae.training.callbacks.best_epoch(run)
    assert len(run.metrics) - best == 2  # two epochs without a better validation ELBO
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=True)["epoch"] == best
    # resumed in two sessions: the same epochs, the same stop
    pyrovae.train(run_dir=tmp_path / "b", epochs=3, **opts)
    resumed = pyrovae.train(run_dir=tmp_path / "b", resume=True, epochs=30, progress=False, figures=False)
    assert [r["test_elbo"] for r in resumed.metrics] == [r["test_elbo"] for r in run.metrics]


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(PyrovaeError, match="val_fraction"):
        pyrovae.train(epochs=2, patience=2, **SMALL)
    with pytest.raises(PyrovaeError, match="val_fraction"):
        pyrovae.train(epochs=2, val_fraction=1.5, **SMALL)
