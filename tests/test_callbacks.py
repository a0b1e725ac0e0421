"""Early stopping, the best checkpoint, a time budget, and the validation split they select on."""

from types import SimpleNamespace

import pyro
import pytest
import torch

import pyrovae
from pyrovae.errors import PyrovaeError
from pyrovae.training.callbacks import BEST, BestCheckpoint, EarlyStopping, TimeBudget, best_epoch, load_best

SMALL = dict(dataset="digits", hidden=[32], z_dim=3, batch_size=100, seed=0, progress=False,
             figures=False)


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(300, 60)


def _rows(*values, metric="test_elbo"):
    return SimpleNamespace(metrics=[{"epoch": i + 1, metric: v, "seconds": 1.0}
                                    for i, v in enumerate(values)], run_dir=None)


def test_early_stopping_counts_epochs_without_improvement():
    stop = EarlyStopping(patience=2)
    assert not stop(_rows(-10.0, -9.0, -9.5), {})
    assert stop(_rows(-10.0, -9.0, -9.5, -9.2), {})  # two epochs since the best
    assert not stop(_rows(-10.0, -9.0, -9.5, -8.0), {})
    assert stop(_rows(-10.0, -9.9, -9.8), {}) is False
    assert EarlyStopping(patience=2, min_delta=0.5)(_rows(-10.0, -9.9, -9.8), {})  # too small gains
    assert EarlyStopping(patience=1, metric="loss", mode="min")(_rows(3.0, 4.0, metric="loss"), {})
    assert best_epoch(_rows(-3.0, -1.0, -2.0)) == 2 and best_epoch(_rows(3.0, 1.0, 2.0), mode="min") == 2
    assert best_epoch(_rows(-3.0, float("nan"))) == 1  # a NaN epoch is never the best
    with pytest.raises(PyrovaeError, match="missing"):
        EarlyStopping(metric="val_nll")(_rows(-1.0), {})
    with pytest.raises(PyrovaeError):
        EarlyStopping(patience=0)
    with pytest.raises(PyrovaeError):
        TimeBudget(-1)


def test_early_stopping_resumes_exactly(data, tmp_path):
    """It keeps no state of its own: a resumed run stops at the same epoch as a straight one."""
    never = EarlyStopping(patience=2, min_delta=1e9)  # nothing improves by 1e9 nats: stop at epoch 3
    straight = pyrovae.train(data=data, run_dir=tmp_path / "a", epochs=10, callbacks=[never], **SMALL)
    assert len(straight.metrics) == 3
    pyrovae.train(data=data, run_dir=tmp_path / "b", epochs=2, callbacks=[never], **SMALL)
    resumed = pyrovae.train(data=data, run_dir=tmp_path / "b", resume=True, epochs=10, callbacks=[never],
                            progress=False, figures=False)
    assert [r["test_elbo"] for r in resumed.metrics] == [r["test_elbo"] for r in straight.metrics]


def test_best_checkpoint_keeps_the_best_epoch(data, tmp_path):
    run = pyrovae.train(data=data, run_dir=tmp_path, epochs=4, lr=0.05, callbacks=[BestCheckpoint()],
                        **SMALL)
    best = best_epoch(run)
    saved = torch.load(tmp_path / BEST, weights_only=True)
    assert saved["epoch"] == best
    loaded = load_best(tmp_path, data=data)
    assert len(loaded.metrics) == best
    pyro.set_rng_seed(3)
    again = pyrovae.elbo_terms(loaded.model, data.test_x)["elbo"]
    assert again == pytest.approx(run.metrics[best - 1]["test_elbo"], abs=3.0)  # one-draw ELBO
    with pytest.raises(PyrovaeError, match="BestCheckpoint"):
        load_best(tmp_path / "nothing")


def test_time_budget_stops_after_the_epoch_that_spends_it(data):
    run = pyrovae.train(data=data, epochs=5, callbacks=[TimeBudget(1e-9)], **SMALL)
    assert len(run.metrics) == 1


def test_validation_split_takes_the_place_of_the_test_set(data):
    val = data.validation(0.2, seed=1)
    assert len(val.test_x) == 60 and len(val.train_x) == 240
    assert val.test_x.sum() + val.train_x.sum() == pytest.approx(data.train_x.sum().item())
    assert torch.equal(val.test_x, data.validation(60, seed=1).test_x)  # seeded; count or fraction
    assert not torch.equal(val.test_x, data.validation(60, seed=2).test_x)
    assert val.train_y is not None and len(val.test_y) == 60
    with pytest.raises(PyrovaeError):
        data.validation(300)
    with pytest.raises(PyrovaeError):
        data.validation(1)
