"""Estimator comparison: gradient SNRs at fixed parameters, one-budget training, table and CLI."""

import argparse
import csv
import json
import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae.cli.compare import add_parsers
from pyrovae.experiments.compare import (
    compare,
    gradient_batch,
    gradient_report,
    parse_estimators,
    snr_vs_k,
    train_budget,
)
from pyrovae.training.config import resolve
from pyrovae.training.loop import prepare_data
from tests.user_models import ConditionalVAE

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


def test_score_function_guide_snr_is_lower_at_the_same_parameters(trained):
    x = gradient_batch(trained, 32, seed=0)
    before = [p.detach().clone() for p in trained.vae.parameters()]
    rows = {r["estimator"]: r for r in gradient_report(trained.vae, x, ["trace", "score", "stl"],
                                                       draws=40, seed=0)}
    trace, score, stl = rows["trace"], rows["score"], rows["stl"]
    # score-function gradients of the same ELBO: same mean, far noisier for q's parameters
    assert score["guide_snr"] < trace["guide_snr"] / 3
    assert score["guide_variance"] > 10 * trace["guide_variance"]
    # sticking the landing drops a zero-mean term: less encoder noise than the full gradient
    assert stl["guide_variance"] < trace["guide_variance"]
    # the decoder gradient does not depend on how q's gradient is estimated: same draws, same value
    for key in ("model_mean_norm", "model_variance", "model_snr"):
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
    enc = [r["guide_snr"] for r in iwae]
    dec = [r["model_snr"] for r in iwae]
    assert enc[0] > enc[1] > enc[2]  # IWAE's inference-network SNR falls with K (Rainforth 2018)
    assert dec[0] < dec[1] < dec[2]  # and its generative-network SNR rises
    assert dreg[-1]["guide_snr"] > 3 * iwae[-1]["guide_snr"]  # DReG removes that decay
    # DReG and IWAE share the decoder gradient
    assert [r["model_snr"] for r in dreg] == pytest.approx(dec, rel=1e-4)


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
    assert "| iwae:3 | 1 | 2 |" in (tmp_path / "compare.md").read_text()  # one seed, 2 epochs
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
    parts, _ = train_budget(tmp_path / "parts", data, epochs=2, on_epoch=lambda r: seen.append(
        pyro.set_rng_seed(99) or len(r.metrics)), estimator="stl", **SMALL)  # RNG disturbed
    assert seen == [1, 2]
    assert [m["test_elbo"] for m in parts.metrics] == [m["test_elbo"] for m in whole.metrics]
    # a seconds budget: whole epochs until the training time passes it
    short, _ = train_budget(tmp_path / "short", data, seconds=1e-6, estimator="stl", **SMALL)
    assert len(short.metrics) == 1


def test_parse_estimators_keeps_multi_argument_specs():
    assert parse_estimators("trace, renyi:0.5,10,iwae:5") == ["trace", "renyi:0.5,10", "iwae:5"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(estimators="trace,sccore"), "did you mean 'score'"),
    (dict(estimators="trace,trace"), "listed twice"),
    (dict(estimators=""), "no estimators"),
    (dict(epochs=2, seconds=10.0), "exactly one budget"),
    (dict(), "exactly one budget"),
    (dict(seconds=-1.0), "seconds must be a positive number"),
    (dict(seconds=math.nan), "seconds must be a positive number"),
    (dict(epochs=0), "epochs must be a whole number"),
    (dict(epochs=1, iwae_k=0), "(iwae_k|--iwae-k) must be"),
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
    with pytest.raises(pyrovae.PyrovaeError, match="seconds must be a positive number"):
        args.func(args)
    # through the command itself: one line naming the flag, exit status 2
    from pyrovae.cli import main

    capsys.readouterr()  # argparse's usage messages above
    assert main(["compare", "--out", str(tmp_path), "--seconds", "0", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--seconds must be a positive number" in err, err


def test_cli_gradients_batch_size_alias():
    for flag in ("--batch-size", "--batch"):
        args = _parser().parse_args(["gradients", "run", flag, "12"])
        assert args.batch == 12


# --------------------------------------------------------------------------- a user's own model


class LabelVAE(ConditionalVAE):
    """A user's conditional VAE defined here (runs record this class's name)."""



USER = dict(batch_size=64, lr=3e-3, binarize="dynamic", seed=0)


def test_gradient_report_for_a_user_model(data):
    obj = LabelVAE()
    run = pyrovae.train(model=obj, data=data, epochs=1, progress=False, figures=False, **USER)
    batch = gradient_batch(run, 32, seed=0)
    assert len(batch) == 2 and batch[1].dtype == torch.int64  # images and labels
    assert torch.equal(gradient_batch(run, 32, seed=0)[1], batch[1])  # seeded
    assert set(batch[0].unique().tolist()) <= {0.0, 1.0}  # binarized as in training
    groups = pyrovae.param_groups(obj, batch)
    bias = pyro.param("pixel_bias")
    assert any(p is bias.unconstrained() for p in groups["model"])  # the pyro.param is p's
    before = [p.detach().clone() for p in [*obj.parameters(), bias]]
    rows = {r["estimator"]: r for r in gradient_report(obj, batch, ["trace", "score"], draws=20,
                                                       seed=0)}
    trace, score = rows["trace"], rows["score"]
    for r in rows.values():
        for group in ("guide", "model"):
            assert math.isfinite(r[f"{group}_mean_norm"]) and r[f"{group}_variance"] > 0
    assert score["guide_variance"] > 10 * trace["guide_variance"]
    for key in ("model_mean_norm", "model_variance", "model_snr"):
        assert score[key] == pytest.approx(trace[key], rel=1e-4)
    for p, q in zip([*obj.parameters(), pyro.param("pixel_bias")], before, strict=True):
        assert torch.equal(p, q)  # parameters left as they were
    ks = snr_vs_k(obj, batch, ks=(1, 4), draws=10, seed=0)
    assert [(r["family"], r["k"]) for r in ks] == [("iwae", 1), ("iwae", 4), ("dreg", 1), ("dreg", 4)]


def test_compare_a_user_model_factory(data, tmp_path):
    starts = []

    def factory():
        obj = LabelVAE()
        starts.append({k: v.clone() for k, v in obj.state_dict().items()})
        return obj

    # iwae:1 is the one-sample ELBO, estimated as trace does: from one start, the same run
    rows = compare(tmp_path, ["trace", "iwae:1"], epochs=1, data=data, iwae_k=20, curve_k=5,
                   draws=5, grad_batch=16, snr_ks=(1, 2), model=factory, **USER)
    assert [r["estimator"] for r in rows] == ["trace", "iwae:1"]
    for r in rows:
        run_dir = tmp_path / r["run"]
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert r["epochs"] == len(metrics) == 1 and r["test_elbo"] == metrics[-1]["test_elbo"]
        assert r["eval_n"] == 60 and math.isfinite(r["guide_snr"]) and math.isfinite(r["model_snr"])
        config = json.loads((run_dir / "config.json").read_text())
        assert config["model"] == "user:tests.test_compare.LabelVAE"
        assert config["estimator"] == r["estimator"]
        # the table's log p(x) is recomputed from the saved weights in a fresh instance
        pyro.clear_param_store()
        saved = pyrovae.load_run(run_dir, model=LabelVAE(), data=data)
        x = saved.data.inputs("test", saved.inputs)
        pyro.set_rng_seed(0)
        assert r["log_px"] == pytest.approx(pyrovae.log_likelihood(saved.model, x, 20).mean().item(),
                                            abs=1e-4)
    # one fresh instance per estimator, built after seeding: every run starts from the same weights,
    # the pyro.param ones included (the first run's trained pixel_bias must not carry on)
    assert len(starts) == 2
    assert all(torch.equal(v, starts[1][k]) for k, v in starts[0].items())
    biases = [torch.load(tmp_path / r["run"] / "checkpoint.pt", weights_only=True)["state"]["params"]
              ["pixel_bias"] for r in rows]
    assert torch.equal(biases[0], biases[1])
    assert rows[0]["test_elbo"] == rows[1]["test_elbo"]
    with open(tmp_path / "snr_vs_k.csv") as f:
        assert [(t["family"], t["k"]) for t in csv.DictReader(f)] == [
            ("iwae", "1"), ("iwae", "2"), ("dreg", "1"), ("dreg", "2")]
    assert (tmp_path / "figures" / "loglik_vs_time.png").stat().st_size > 5000


def test_compare_takes_a_model_class_as_its_factory(data, tmp_path):
    """A class is the natural zero-argument factory (it has a ``model`` attribute, but is no model)."""
    rows = compare(tmp_path, ["trace"], epochs=1, data=data.subset(100, 20), iwae_k=5, curve_k=2,
                   draws=3, grad_batch=8, snr_ks=(1,), model=LabelVAE, **USER)
    assert rows[0]["epochs"] == 1 and math.isfinite(rows[0]["log_px"])
