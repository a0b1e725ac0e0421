"""Bernoulli-latent toy: closed forms against Pyro, estimator unbiasedness, SVI against EM, CLI."""

from __future__ import annotations

import argparse
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyrovae.cli import toy as toy_cli
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.toy import exact, plots
from pyrovae.experiments.toy.data import check_data, sample_data
from pyrovae.experiments.toy.fit import fit_toy
from pyrovae.experiments.toy.model import ESTIMATORS, BernoulliToy
from pyrovae.infer.registry import make_elbo

P_TRUE, SIGMA_TRUE, N = 0.3, 0.5, 500


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tensors here have a few hundred elements: extra threads only add contention
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return sample_data(P_TRUE, SIGMA_TRUE, N, seed=0)[0]


@pytest.fixture(scope="module")
def em_fit(data):
    result = exact.em(data, p_init=0.7, sigma=SIGMA_TRUE)
    se = exact.mle_standard_errors(data, result.p, result.sigma)["p"]
    return result, se


def _first_step_within(records, target: float, tol: float) -> int | None:
    return next((r["step"] for r in records if r["exact_loglik"] >= target - tol), None)


# ---------------------------------------------------------------- data


def test_sample_data_is_seeded_and_follows_the_model():
    x, z = sample_data(0.3, 0.5, 20_000, seed=1)
    x2, _ = sample_data(0.3, 0.5, 20_000, seed=1)
    x3, _ = sample_data(0.3, 0.5, 20_000, seed=2)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    assert x.dtype == torch.float64
    se_p = math.sqrt(0.3 * 0.7 / 20_000)
    assert abs(float(z.mean()) - 0.3) < 4 * se_p
    noise = x - z
    assert abs(float(noise.mean())) < 4 * 0.5 / math.sqrt(20_000)
    assert abs(float(noise.std()) - 0.5) < 0.01


def test_sampling_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample_data(0.3, 0.5, 100, seed=7)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- closed forms


def test_closed_forms_match_bayes_rule_with_torch_distributions(data):
    p, sigma = 0.37, 0.61
    f64 = {"dtype": torch.float64}
    lj = torch.stack(
        [
            dist.Bernoulli(torch.tensor(p, **f64)).log_prob(torch.tensor(float(k), **f64))
            + dist.Normal(torch.tensor(float(k), **f64), torch.tensor(sigma, **f64)).log_prob(data)
            for k in (0, 1)
        ]
    )
    torch.testing.assert_close(exact.log_joint(data, p, sigma), lj, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(
        exact.log_marginal(data, p, sigma), lj.logsumexp(0), rtol=1e-13, atol=0
    )
    post = (lj[1] - lj.logsumexp(0)).exp()
    torch.testing.assert_close(exact.posterior_prob(data, p, sigma), post, rtol=1e-12, atol=1e-15)
    # the posterior logit is affine in x with the advertised coefficients
    w, b = exact.posterior_params(p, sigma)
    torch.testing.assert_close(
        exact.posterior_logit(data, p, sigma), w * data + b, rtol=1e-12, atol=1e-12
    )


def test_em_is_a_stationary_point_of_the_exact_likelihood(data):
    for learn_sigma in (False, True):
        result = exact.em(
            data, p_init=0.9, sigma=1.3 if learn_sigma else SIGMA_TRUE, learn_sigma=learn_sigma
        )
        assert result.converged
        theta = torch.tensor([result.p, result.sigma], dtype=torch.float64, requires_grad=True)
        ll = exact.log_marginal(data, theta[0], theta[1]).sum()
        (grad,) = torch.autograd.grad(ll, theta)
        assert abs(float(grad[0])) < 1e-6
        if learn_sigma:
            assert abs(float(grad[1])) < 1e-6
        assert math.isclose(result.loglik, float(ll.detach()), rel_tol=1e-12)
        # a maximum: nudging p lowers the likelihood
        for dp in (-1e-3, 1e-3):
            assert (
                float(exact.log_marginal(data, result.p + dp, result.sigma).sum()) < result.loglik
            )


def _enum_loss(x, p, sigma, w, b, learn_sigma=False) -> float:
    toy = BernoulliToy(p_init=p, sigma=sigma, learn_sigma=learn_sigma, guide_init=(w, b))
    with pyro.get_param_store().scope():
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
            toy.model, config_enumerate(toy.guide, "parallel"), x
        )
    return loss.item()


@pytest.mark.parametrize(
    "p, sigma, w, b, learn_sigma",
    [
        (0.3, 0.5, 0.0, 0.0, False),
        (0.8, 0.5, -2.0, 1.5, False),
        (0.05, 1.7, 7.0, -3.0, True),
        (0.5, 0.2, 25.0, -12.0, True),
    ],
)
def test_log_marginal_equals_pyro_elbo_plus_kl(data, p, sigma, w, b, learn_sigma):
    elbo = -_enum_loss(data, p, sigma, w, b, learn_sigma)
    q_logits = w * data + b
    kl = float(exact.kl_to_posterior(data, q_logits, p, sigma).sum())
    log_px = float(exact.log_marginal(data, p, sigma).sum())
    assert kl > 1e-3  # a wrong guide: the identity is not trivially log p = ELBO
    assert elbo + kl == pytest.approx(log_px, rel=1e-13, abs=1e-11)
    # the closed-form ELBO agrees with Pyro's too
    assert float(exact.elbo(data, q_logits, p, sigma).sum()) == pytest.approx(elbo, rel=1e-13)


def test_enum_loss_at_the_exact_posterior_guide_is_minus_log_marginal(data):
    p, sigma = 0.42, 0.7
    w, b = (float(t) for t in exact.posterior_params(p, sigma))
    loss = _enum_loss(data, p, sigma, w, b)
    log_px = float(exact.log_marginal(data, p, sigma).sum())
    assert loss == pytest.approx(-log_px, rel=1e-14, abs=1e-11)
    assert float(exact.kl_to_posterior(data, w * data + b, p, sigma).abs().max()) < 1e-14


def test_trace_elbo_estimate_is_unbiased(data):
    p, sigma, w, b = 0.6, 0.5, 1.0, -0.2
    toy = BernoulliToy(p_init=p, sigma=sigma, guide_init=(w, b))
    elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    with pyro.get_param_store().scope():
        batches = torch.tensor([-elbo.loss(toy.model, toy.guide, data) for _ in range(30)])
    mean, se = float(batches.mean()), float(batches.std()) / math.sqrt(len(batches))
    exact_elbo = float(exact.elbo(data, w * data + b, p, sigma).sum())
    log_px = float(exact.log_marginal(data, p, sigma).sum())
    assert abs(mean - exact_elbo) < 4 * se
    # the test has power: the estimate is distinguishable from log p(x)
    assert log_px - exact_elbo > 20 * se


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_gradients_are_unbiased_for_the_exact_elbo(data, name):
    p, sigma, w, b = 0.6, 0.5, 1.0, -0.2
    # exact gradient of -ELBO w.r.t. the unconstrained logit(p) and the guide's (w, b)
    theta = torch.tensor([math.log(p / (1 - p)), w, b], dtype=torch.float64, requires_grad=True)
    loss = -exact.elbo(data, theta[1] * data + theta[2], torch.sigmoid(theta[0]), sigma).sum()
    (expected,) = torch.autograd.grad(loss, theta)

    est = ESTIMATORS[name]
    toy = BernoulliToy(p_init=p, sigma=sigma, guide_init=(w, b), baseline=est.baseline)
    guide = toy.guide
    elbo = make_elbo(est.spec, max_plate_nesting=1)
    repeats = 1 if name == "enum" else 150
    pyro.set_rng_seed(0)
    grads = []
    with pyro.get_param_store().scope():
        store = pyro.get_param_store()
        for _ in range(repeats):
            elbo.loss_and_grads(toy.model, guide, data)
            params = dict(store.named_parameters())
            grads.append(torch.stack([params[k].grad.clone() for k in ("p", "guide_w", "guide_b")]))
            for v in params.values():
                v.grad = None
    grads = torch.stack(grads)
    if name == "enum":
        torch.testing.assert_close(grads[0], expected, rtol=1e-10, atol=1e-9)
        return
    se = grads.std(0) / math.sqrt(repeats)
    assert ((grads.mean(0) - expected).abs() < 4 * se).all(), (grads.mean(0), expected, se)
    # the score-function gradient of p's logit is sum_i (z_i - p) with z_i ~ q: its variance is
    # sum_i q_i (1 - q_i) exactly, for trace and tracegraph alike
    q = torch.sigmoid(w * data + b)
    var_p = float((q * (1 - q)).sum())
    assert float(grads[:, 0].var()) == pytest.approx(var_p, rel=4 * math.sqrt(2 / repeats))


# ---------------------------------------------------------------- SVI against EM


@pytest.fixture(scope="module")
def fits(data):
    kwargs = dict(steps=120, lr=0.05, p_init=0.7, sigma=SIGMA_TRUE)
    return {
        ("enum", 0): fit_toy(data, "enum", seed=0, **kwargs),
        ("tracegraph", 0): fit_toy(data, "tracegraph", seed=0, **kwargs),
        ("trace", 0): fit_toy(data, "trace", seed=0, **kwargs),
        ("trace", 1): fit_toy(data, "trace", seed=1, **kwargs),
    }


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_svi_recovers_the_em_estimate(fits, em_fit, name):
    em_result, se = em_fit
    assert abs(em_result.p - P_TRUE) < 3 * se  # EM itself is consistent with the truth
    result = fits[(name, 0)]
    assert result.records[0]["p"] == pytest.approx(0.7)
    assert abs(result.final["p"] - em_result.p) < se
    assert result.final["exact_loglik"] == pytest.approx(em_result.loglik / N, abs=1e-3)
    assert float(result.params["p"]) == result.final["p"]
    # the guide approaches the exact posterior: the ELBO gap (mean KL) shrank 25-fold
    gaps = [r["exact_loglik"] - r["exact_elbo"] for r in (result.records[0], result.final)]
    assert gaps[1] < gaps[0] / 25


def test_enum_reaches_the_em_likelihood_in_fewer_steps_than_score_function(fits, em_fit):
    target = em_fit[0].loglik / N
    enum_steps = _first_step_within(fits[("enum", 0)].records, target, 1e-3)
    assert enum_steps is not None
    for seed in (0, 1):
        trace_steps = _first_step_within(fits[("trace", seed)].records, target, 1e-3)
        assert trace_steps is not None and enum_steps < trace_steps


def test_svi_learns_sigma_like_em(data):
    em_result = exact.em(data, p_init=0.7, sigma=1.0, learn_sigma=True)
    se = exact.mle_standard_errors(data, em_result.p, em_result.sigma, learn_sigma=True)
    result = fit_toy(data, "enum", steps=150, lr=0.1, p_init=0.7, sigma=1.0, learn_sigma=True)
    assert result.records[0]["sigma"] == pytest.approx(1.0)
    assert abs(result.final["p"] - em_result.p) < se["p"]
    assert abs(result.final["sigma"] - em_result.sigma) < se["sigma"]


def test_fits_leave_no_params_or_rng_state_behind(data):
    pyro.clear_param_store()
    pyro.param("p", torch.tensor(0.123))
    torch.manual_seed(5)
    expected_draw = torch.rand(2)
    torch.manual_seed(5)
    a = fit_toy(data, "trace", steps=5, p_init=0.6, seed=3)
    b = fit_toy(data, "trace", steps=5, p_init=0.6, seed=3)
    assert torch.equal(torch.rand(2), expected_draw)
    assert list(pyro.get_param_store().keys()) == ["p"]
    assert pyro.param("p").item() == pytest.approx(0.123)

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(a.records) == strip(b.records)
    # a stale "p" in the store did not become the starting point
    assert a.records[0]["p"] == pytest.approx(0.6)
    pyro.clear_param_store()


def test_fit_stops_early_and_logs_every_k_steps(data):
    rows = []
    result = fit_toy(data, "enum", steps=40, log_every=10, p_init=0.7, on_record=rows.append)
    assert [r["step"] for r in result.records] == [0, 10, 20, 30, 40] and rows == result.records
    stopped = fit_toy(data, "enum", steps=200, p_init=0.7, stop=lambda r: r["p"] < 0.5)
    assert stopped.final["p"] < 0.5 <= stopped.records[-2]["p"] and stopped.final["step"] < 200


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sample_data(1.5, 0.5, 10), r"p must be in \(0, 1\), got 1.5.*--p"),
        (lambda: sample_data(0.0, 0.5, 10), r"p must be in \(0, 1\)"),
        (lambda: sample_data(float("nan"), 0.5, 10), r"p is NaN"),
        (lambda: sample_data(0.3, 0.0, 10), r"sigma must be > 0.*--sigma"),
        (lambda: sample_data(0.3, -1.0, 10), r"sigma must be > 0"),
        (lambda: sample_data(0.3, 0.5, 0), r"n must be a positive integer.*--n"),
        (lambda: sample_data(0.3, 0.5, -4), r"n must be a positive integer"),
        (
            lambda: check_data(torch.tensor([0.1, float("nan"), 1.0])),
            r"1 NaN.*index 1.*drop or impute",
        ),
        (lambda: check_data(torch.tensor([float("inf")])), r"NaN or infinite"),
        (lambda: check_data(torch.zeros(0)), r"empty"),
        (lambda: check_data(torch.zeros(2, 3)), r"1-D"),
        (lambda: fit_toy(torch.tensor([0.1, float("nan")]), "enum"), r"NaN"),
        (lambda: fit_toy(torch.zeros(3), "reinforce"), r"unknown estimator 'reinforce'.*enum"),
        (lambda: fit_toy(torch.zeros(3), "enum", steps=0), r"steps must be a positive integer"),
        (lambda: fit_toy(torch.zeros(3), "enum", lr=-1.0), r"lr must be > 0"),
        (
            lambda: fit_toy(torch.zeros(3), "enum", p_init=1.0),
            r"p_init must be in \(0, 1\).*--p-init",
        ),
        (lambda: exact.log_marginal(torch.zeros(3), 1.0, 0.5), r"p must be in \(0, 1\)"),
        (lambda: exact.em(torch.zeros(3), sigma=-0.1), r"sigma must be > 0"),
    ],
)
def test_bad_input_gives_clear_errors(call, match):
    with pytest.raises(PyrovaeError, match=match):
        call()


# ---------------------------------------------------------------- plots and CLI


def test_plots_draw_the_exact_quantities(data, fits):
    fig = plots.plot_mixture_fit(data, (P_TRUE, SIGMA_TRUE), {"EM": (0.31, 0.5)})
    true_line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("true"))
    xs, ys = (torch.as_tensor(v, dtype=torch.float64) for v in true_line.get_data())
    torch.testing.assert_close(ys, exact.log_marginal(xs, P_TRUE, SIGMA_TRUE).exp())
    assert float(torch.trapezoid(ys, xs)) == pytest.approx(1.0, abs=1e-3)

    rows = fits[("enum", 0)].records + fits[("trace", 0)].records
    fig = plots.plot_training(rows, em_loglik=-1.0)
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "trace: log p(x)")
    assert list(line.get_ydata()) == [r["exact_loglik"] for r in fits[("trace", 0)].records]

    final = fits[("enum", 0)].final
    fig = plots.plot_posterior({"enum": final}, (P_TRUE, SIGMA_TRUE))
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "enum: q(z=1|x)")
    xs, ys = (torch.as_tensor(v, dtype=torch.float64) for v in line.get_data())
    torch.testing.assert_close(ys, torch.sigmoid(final["guide_w"] * xs + final["guide_b"]))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrovae")
    toy_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    args = _parser().parse_args(
        ["toy", "--n", "200", "--steps", "20", "--estimator", "enum", "trace", "--out", str(out)]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    x, _ = sample_data(0.3, 0.5, 200, seed=0)
    em_result = exact.em(x, p_init=0.5, sigma=0.5)
    assert f"{em_result.p:.4f}" in printed and "SVI enum" in printed and "SVI trace" in printed

    config = json.loads((out / "config.json").read_text())
    assert config["n"] == 200 and config["estimator"] == ["enum", "trace"] and "func" not in config
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["estimator"] for r in rows] == ["enum"] * 21 + ["trace"] * 21
    assert [r["step"] for r in rows[:21]] == list(range(21))

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert torch.equal(ckpt["data"]["x"], x)
    assert float(ckpt["params"]["trace"]["p"]) == rows[-1]["p"]
    assert ckpt["em"]["p"] == pytest.approx(em_result.p, rel=1e-12)
    for name in ("data_fit", "training", "posterior"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--p", "1.5"], r"p must be in \(0, 1\), got 1.5: pass --p between 0 and 1"),
        (["--sigma", "0"], r"sigma must be > 0"),
        (["--n", "0"], r"n must be a positive integer"),
        (["--learn-sigma", "--sigma-init", "-1"], r"sigma_init must be > 0.*--sigma-init"),
    ],
)
def test_cli_bad_input_fails_before_creating_the_run_folder(tmp_path, argv, match):
    out = tmp_path / "run"
    args = _parser().parse_args(["toy", *argv, "--out", str(out)])
    with pytest.raises(PyrovaeError, match=match):
        args.func(args)
    assert not out.exists()


def test_standalone_cli_prints_one_line_error(capsys):
    assert toy_cli.main(["--n", "-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyrovae: error: n must be a positive integer") and err.count("\n") == 1
