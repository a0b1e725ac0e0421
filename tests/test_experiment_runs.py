"""Multi-run experiments: seeds summarised as mean and standard error, finished runs reused,
interrupted runs resumed, never overwritten."""

import csv
import math
import statistics

import pytest
import torch

import pyrovae
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.compare import compare, train_budget
from pyrovae.experiments.runner import ensure_run, mean_se, summarise
from pyrovae.experiments.sweep import sweep

SMALL = dict(dataset="digits", hidden=[32], z_dim=3, batch_size=100, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(200, 40)


def test_mean_and_standard_error_by_hand():
    values = [1.0, 2.0, 4.0, 7.0]
    mean, se = mean_se(values)
    assert mean == 3.5
    assert se == pytest.approx(statistics.stdev(values) / 2)  # s / sqrt(4), s with n - 1
    assert math.isnan(mean_se([5.0])[1])  # one seed: the error is unknown, not 0
    with pytest.raises(PyrovaeError):
        mean_se([])
    rows = [{"k": "a", "seed": 0, "v": 1.0}, {"k": "a", "seed": 1, "v": 3.0}, {"k": "b", "seed": 0, "v": 2.0}]
    out = summarise(rows, ["k"], ["v"])
    assert [(r["k"], r["seeds"], r["v"]) for r in out] == [("a", 2, 2.0), ("b", 1, 2.0)]
    assert out[0]["v_se"] == pytest.approx(1.0) and "seed" not in out[0]


def test_compare_seeds_report_mean_and_standard_error(data, tmp_path):
    rows = compare(tmp_path, ["trace"], epochs=1, data=data, iwae_k=5, curve_k=3, draws=3,
                   grad_batch=8, snr_ks=[1, 2], seeds=3, **SMALL)
    with open(tmp_path / "compare_runs.csv") as f:
        per_seed = list(csv.DictReader(f))
    assert [int(r["seed"]) for r in per_seed] == [0, 1, 2]
    values = [float(r["log_px"]) for r in per_seed]
    assert len(set(values)) == 3  # three seeds, three different runs
    assert rows[0]["seeds"] == 3
    assert rows[0]["log_px"] == pytest.approx(statistics.mean(values))
    assert rows[0]["log_px_se"] == pytest.approx(statistics.stdev(values) / math.sqrt(3))
    assert " ± " in (tmp_path / "compare.md").read_text()
    for s in range(3):
        assert (tmp_path / "trace" / f"seed-{s}" / "checkpoint.pt").is_file()


def test_rerun_reuses_finished_runs_and_resumes_interrupted_ones(data, tmp_path):
    config = dict(betas=[1.0], schedules=[], data=data, **SMALL)
    first = sweep(tmp_path, epochs=2, **config)
    stamp = (tmp_path / "beta-1" / "checkpoint.pt").stat().st_mtime_ns
    again = sweep(tmp_path, epochs=2, **config)
    assert (tmp_path / "beta-1" / "checkpoint.pt").stat().st_mtime_ns == stamp  # not retrained
    assert again[0]["test_elbo"] == first[0]["test_elbo"]
    # an interrupted run (1 of 3 epochs) is resumed and ends as a straight 3-epoch run
    straight = pyrovae.train(run_dir=tmp_path / "straight", data=data, epochs=3, progress=False,
                             figures=False, **SMALL)
    ensure_run(tmp_path / "cut", 1, data=data, **SMALL)
    resumed, how = ensure_run(tmp_path / "cut", 3, data=data, **SMALL)
    assert how == "resumed"
    assert [r["test_elbo"] for r in resumed.metrics] == [r["test_elbo"] for r in straight.metrics]


def test_a_folder_holding_other_settings_is_refused_not_overwritten(data, tmp_path):
    ensure_run(tmp_path / "run", 1, data=data, **SMALL)
    with pytest.raises(PyrovaeError, match="other settings.*z_dim: recorded 3, asked 5"):
        ensure_run(tmp_path / "run", 1, data=data, **{**SMALL, "z_dim": 5})


def test_two_schedules_of_one_kind_get_their_own_folders(data, tmp_path):
    rows = sweep(tmp_path, betas=[], schedules=["cyclical:cycles=1", "cyclical:cycles=2"], data=data,
                 epochs=1, **SMALL)
    assert [r["run"] for r in rows] == ["schedule-cyclical-cycles=1", "schedule-cyclical-cycles=2"]
    assert rows[0]["test_elbo"] != rows[1]["test_elbo"]
    with pytest.raises(PyrovaeError, match="same run twice"):
        sweep(tmp_path, betas=[1, 1.0], schedules=[], data=data, epochs=1, **SMALL)


def test_budget_measurements_survive_a_restart(data, tmp_path):
    seen = []
    run, measured = train_budget(tmp_path, data, epochs=2, on_epoch=lambda r: seen.append(1) or {"n": 1},
                                 **SMALL)
    assert [m["epoch"] for m in measured] == [1, 2] and len(seen) == 2
    run, again = train_budget(tmp_path, data, epochs=2, on_epoch=lambda r: seen.append(1) or {"n": 1},
                              **SMALL)
    assert again == measured and len(seen) == 2  # nothing trained or measured again
