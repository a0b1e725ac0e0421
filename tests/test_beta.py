"""beta and KL annealing in training: the schedule reaches the loop, large beta shrinks the KL."""

import csv
import json

import pytest

from pyrovae import runs
from pyrovae.sweep import sweep
from pyrovae.training import train

GREY = dict(dataset="digits", binarize="none", likelihood="gaussian", obs_scale=0.2, epochs=3)


@pytest.fixture(scope="module")
def grey_digits(digits):
    return digits.subset(600, 100)


def test_large_beta_gives_a_smaller_kl_than_beta_one(grey_digits):
    one = train(data=grey_digits, beta=1.0, progress=False, **GREY)
    eight = train(data=grey_digits, beta=8.0, progress=False, **GREY)
    kl_one, kl_eight = one.metrics[-1]["test_kl"], eight.metrics[-1]["test_kl"]
    assert kl_eight < 0.7 * kl_one
    # and reconstructions pay for it
    assert eight.metrics[-1]["test_recon"] < one.metrics[-1]["test_recon"]


def test_beta_zero_trains_without_a_prior_pull(grey_digits):
    zero = train(data=grey_digits, beta=0.0, progress=False, **GREY)
    one = train(data=grey_digits, beta=1.0, progress=False, **GREY)
    assert zero.metrics[-1]["test_kl"] > 2 * one.metrics[-1]["test_kl"]


def test_schedule_values_are_logged_and_resume_continues_the_curve(tmp_path, grey_digits):
    spec = "linear:epochs=2"
    full = train(data=grey_digits, kl_schedule=spec, beta=2.0, run_dir=tmp_path / "a",
                 progress=False, figures=False, **{**GREY, "epochs": 3})
    betas = [r["beta"] for r in full.metrics]
    spe = full.metrics[0]["step"]  # steps per epoch; the row logs the last step's beta
    assert betas[0] == pytest.approx(2.0 * (spe - 1) / (2 * spe))
    assert betas[1] == pytest.approx(2.0 * (2 * spe - 1) / (2 * spe)) and betas[2] == 2.0
    train(data=grey_digits, kl_schedule=spec, beta=2.0, run_dir=tmp_path / "b", progress=False,
          figures=False, **{**GREY, "epochs": 1})
    resumed = train(run_dir=tmp_path / "b", data=grey_digits, resume=True, epochs=3,
                    progress=False, figures=False)
    assert [r["beta"] for r in resumed.metrics] == betas
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["kl_schedule"] == spec


def test_sweep_writes_table_and_figures_from_its_runs(tmp_path, grey_digits):
    rows = sweep(tmp_path, betas=[0.5, 4.0], schedules=["cyclical:cycles=2,ratio=0.5"],
                 data=grey_digits, **{**GREY, "epochs": 2})
    assert [r["run"] for r in rows] == ["beta-0.5", "beta-4", "schedule-cyclical"]
    with open(tmp_path / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    for row in table:
        last = runs.read_metrics(tmp_path / row["run"])[-1]
        assert float(row["test_kl"]) == pytest.approx(last["test_kl"])
    assert float(table[0]["test_kl"]) > float(table[1]["test_kl"])  # beta 0.5 vs 4
    for fig in ("rate_distortion", "active_units", "kl_curves"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    assert "| beta-4 | 4 | constant |" in (tmp_path / "sweep.md").read_text()


def test_jit_estimator_follows_a_schedule_without_recompiling(monkeypatch, grey_digits):
    import pyrovae.training as training

    built = []
    real = training.make_elbo

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training, "make_elbo", spy)
    run = train(data=grey_digits.subset(200, 40), estimator="jit", kl_schedule="linear",
                progress=False, **{**GREY, "epochs": 2})
    assert run.metrics[0]["beta"] < 1.0 == run.metrics[1]["beta"]  # beta changed every step
    assert len(built[0]._loss_and_surrogate_loss.compiled) == 1
