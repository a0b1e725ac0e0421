"""Estimator comparison: gradient SNRs at fixed parameters, one-budget training, table and CLI."""

import argparse
import csv
import json
import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae.compare import (
    add_parsers,
    compare,
    gradient_batch,
    gradient_report,
    parse_estimators,
    snr_vs_k,
    train_budget,
)
from pyrovae.config import resolve
from pyrovae.training import prepare_data

SMALL = dict(dataset="digits", hidden=[64], z_dim=4, batch_size=64, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small networks run faster on one thread, and the timings are not disturbed by others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return pyrovae.load_dataset("digits").subset(300, 60)


@pytest.fixture(scope="module")
def trained(data):
    """A briefly trained network: gradient statistics are measured at its parameters."""
    return pyrovae.train(data=data, epochs=1, progress=False, figures=False, **SMALL)


def test_score_function_encoder_snr_is_lower_at_the_same_parameters(trained):
    x = gradient_batch(trained, 32, seed=0)
    before = [p.detach().clone() for p in trained.vae.parameters()]
    rows = {r["estimator"]: r for r in gradient_report(trained.vae, x, ["trace", "score", "stl"],
                                                       draws=40, seed=0)}
    trace, score, stl = rows["trace"], rows["score"], rows["stl"]
    # score-function gradients of the same ELBO: same mean, far noisier for q's parameters
    assert score["encoder_snr"] < trace["encoder_snr"] / 3
    assert score["encoder_variance"] > 10 * trace["encoder_variance"]
    # sticking the landing drops a zero-mean term: less encoder noise than the full gradient
    assert stl["encoder_variance"] < trace["encoder_variance"]
    # the decoder gradient does not depend on how q's gradient is estimated: same draws, same value
    for key in ("decoder_mean_norm", "decoder_variance", "decoder_snr"):
        assert score[key] == pytest.approx(trace[key], rel=1e-4)
        assert stl[key] == pytest.approx(trace[key], rel=1e-4)
    assert all(r["seconds_per_step"] > 0 for r in rows.values())
    for p, q in zip(trained.vae.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_snr_against_k_follows_theory(trained):
    x = gradient_batch(trained, 32, seed=0)
    rows = snr_vs_k(trained.vae, x, ks=(1, 4, 16), draws=30, seed=0)
    iwae = [r for r in rows if r["family"] == "iwae"]
    dreg = [r for r in rows if r["family"] == "dreg"]
    assert [r["k"] for r in iwae] == [1, 4, 16]
    enc = [r["encoder_snr"] for r in iwae]
    dec = [r["decoder_snr"] for r in iwae]
    assert enc[0] > enc[1] > enc[2]  # IWAE's inference-network SNR falls with K (Rainforth 2018)
    assert dec[0] < dec[1] < dec[2]  # and its generative-network SNR rises
    assert dreg[-1]["encoder_snr"] > 3 * iwae[-1]["encoder_snr"]  # DReG removes that decay
    # DReG and IWAE share the decoder gradient
    assert [r["decoder_snr"] for r in dreg] == pytest.approx(dec, rel=1e-4)


def test_compare_table_matches_the_runs(data, tmp_path):
    rows = compare(tmp_path, ["trace", "iwae:3"], epochs=2, data=data, iwae_k=50, curve_k=10,
                   draws=10, grad_batch=32, snr_ks=(1, 4), **SMALL)
    assert [r["estimator"] for r in rows] == ["trace", "iwae:3"]
    for r in rows:
        run_dir = tmp_path / r["run"]
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert r["epochs"] == len(metrics) == 2
        assert r["test_elbo"] == metrics[-1]["test_elbo"]
        assert r["active_units"] == metrics[-1]["active_units"]
        assert r["seconds_per_epoch"] == pytest.approx(sum(m["seconds"] for m in metrics) / 2)
        # the log-likelihood is the same estimate recomputed from the saved weights
        saved = pyrovae.load_run(run_dir, data=False)
        x = prepare_data(resolve(saved.config), data).test_x
        pyro.set_rng_seed(0)
        assert r["log_px"] == pytest.approx(pyrovae.log_likelihood(saved.vae, x, 50).mean().item(),
                                            abs=1e-4)
        assert r["log_px"] > r["test_elbo"]  # K = 50 tightens the one-sample bound
        assert r["eval_n"] == 60 and r["iwae_k"] == 50
    with open(tmp_path / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(t["log_px"]) for t in table] == pytest.approx([r["log_px"] for r in rows])
    assert "| iwae:3 | 2 |" in (tmp_path / "compare.md").read_text()
    with open(tmp_path / "curves.csv") as f:
        curve = [c for c in csv.DictReader(f) if c["estimator"] == "trace"]
    assert [int(c["epoch"]) for c in curve] == [1, 2]
    assert float(curve[-1]["seconds"]) == pytest.approx(rows[0]["train_seconds"])
    for name in ("loglik_vs_time.png", "snr_vs_k.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 5000


def test_epoch_by_epoch_budget_trains_as_one_run(data, tmp_path):
    whole = pyrovae.train(run_dir=tmp_path / "whole", data=data, epochs=2, progress=False,
                          figures=False, estimator="stl", **SMALL)
    seen = []
    parts = train_budget(tmp_path / "parts", data, epochs=2, on_epoch=lambda r: seen.append(
        pyro.set_rng_seed(99) or len(r.metrics)), estimator="stl", **SMALL)  # RNG disturbed
    assert seen == [1, 2]
    assert [m["test_elbo"] for m in parts.metrics] == [m["test_elbo"] for m in whole.metrics]
    # a seconds budget: whole epochs until the training time passes it
    short = train_budget(tmp_path / "short", data, seconds=1e-6, estimator="stl", **SMALL)
    assert len(short.metrics) == 1


def test_parse_estimators_keeps_multi_argument_specs():
    assert parse_estimators("trace, renyi:0.5,10,iwae:5") == ["trace", "renyi:0.5,10", "iwae:5"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(estimators="trace,sccore"), "did you mean 'score'"),
    (dict(estimators="trace,trace"), "listed twice"),
    (dict(estimators=""), "no estimators"),
    (dict(epochs=2, seconds=10.0), "exactly one budget"),
    (dict(), "exactly one budget"),
    (dict(seconds=-1.0), "--seconds must be a positive number"),
    (dict(seconds=math.nan), "--seconds must be a positive number"),
    (dict(epochs=0), "--epochs must be a whole number"),
    (dict(epochs=1, iwae_k=0), "--iwae-k must be"),
])
def test_bad_input_is_one_clear_error(tmp_path, kwargs, message):
    kwargs = {"estimators": "trace", **kwargs}
    with pytest.raises(pyrovae.PyrovaeError, match=message):
        compare(tmp_path, data=None, **kwargs)
    assert not (tmp_path / "trace").exists()  # checked before any training


def _parser():
    parser = argparse.ArgumentParser(prog="pyrovae")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_gradients_writes_the_table(trained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    pyrovae.train(run_dir=run_dir, epochs=1, progress=False, figures=False, **SMALL)
    args = _parser().parse_args(["gradients", str(run_dir), "--estimators", "trace,score",
                                 "--draws", "5", "--batch", "16"])
    assert args.func(args) == 0
    with open(run_dir / "gradients.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["estimator"] for t in table] == ["trace", "score"]
    assert "| score |" in capsys.readouterr().out
    bad = _parser().parse_args(["gradients", str(run_dir), "--estimators", "iwae:0"])
    with pytest.raises(pyrovae.PyrovaeError, match="K .* must be >= 1"):
        bad.func(bad)


def test_cli_compare_budget_is_required_and_exclusive(tmp_path, capsys):
    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--out", str(tmp_path), "--epochs", "1", "--seconds", "2"])
    args = parser.parse_args(["compare", "--out", str(tmp_path), "--seconds", "0",
                              "--dataset", "digits"])
    with pytest.raises(pyrovae.PyrovaeError, match="--seconds must be a positive number"):
        args.func(args)
