"""Gradient diagnostics: exact numbers from the draws, no side effects, Rainforth et al.'s SNR."""

import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae.evaluation.diagnostics import gradient_draws, gradient_stats, param_groups
from pyrovae.infer.registry import make_elbo
from pyrovae.models.linear_gaussian import closed_form_elbo, exact_guide, make_problem
from pyrovae.models.vae import VAE


@pytest.fixture(autouse=True)
def _isolated():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_num_threads(threads)


def _setup(posterior=False):
    model, guide, x = make_problem()
    if posterior:
        guide = exact_guide(model, diagonal=True)
    groups = {"encoder": list(guide.parameters()), "decoder": list(model.parameters())}
    return model, guide, x, groups


def test_stats_are_computed_from_the_draws_as_documented():
    model, guide, x, groups = _setup()
    elbo = make_elbo("trace", 4, max_plate_nesting=1)
    stats = gradient_stats(elbo, model.model, guide.guide, (x,), {}, groups, draws=30, seed=5)
    samples, _ = gradient_draws(elbo, model.model, guide.guide, (x,), {}, groups, 30, seed=5)
    for name, g in samples.items():
        assert g.shape == (30, sum(p.numel() for p in groups[name]))
        s = stats[name]
        assert s["coordinates"] == g.shape[1]
        assert s["mean_norm"] == pytest.approx(g.mean(0).norm().item(), rel=1e-12)
        assert s["variance"] == pytest.approx(g.var(0).mean().item(), rel=1e-12)
        snr = (g.mean(0).abs() / g.std(0)).mean().item()
        assert s["snr"] == pytest.approx(snr, rel=1e-12)
    assert 0 < stats["seconds_per_draw"] < 1


def test_mean_gradient_is_the_exact_gradient():
    """With many particles the mean draw is the closed-form ELBO gradient (of the loss)."""
    model, guide, x, groups = _setup()
    samples, _ = gradient_draws(
        make_elbo("trace", 256), model.model, guide.guide, (x,), {}, groups, draws=20
    )
    for name, params in groups.items():
        loss = -closed_form_elbo(model, guide, x).sum()
        exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        se = samples[name].std(0) / math.sqrt(20)
        assert ((samples[name].mean(0) - exact).abs() < 5 * se).all()
        assert se.max() < 0.1 * exact.abs().max()


def test_no_side_effects_and_reproducible():
    """Parameters, their .grad and the global RNG are as before; the same seed repeats."""
    model, guide, x, groups = _setup()
    params = [p for ps in groups.values() for p in ps]
    before = [p.detach().clone() for p in params]
    sentinels = [torch.full_like(p, 7.0) for p in params]
    for p, s in zip(params, sentinels, strict=True):
        p.grad = s
    torch.manual_seed(42)
    expected_next = torch.rand(3)
    torch.manual_seed(42)
    elbo = make_elbo("dreg:4", max_plate_nesting=1)
    a = gradient_stats(elbo, model.model, guide.guide, (x,), {}, groups, draws=5, seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    for p, b, s in zip(params, before, sentinels, strict=True):
        assert torch.equal(p.detach(), b) and p.grad is s
    b = gradient_stats(elbo, model.model, guide.guide, (x,), {}, groups, draws=5, seed=1)
    c = gradient_stats(elbo, model.model, guide.guide, (x,), {}, groups, draws=5, seed=2)
    assert a["encoder"] == b["encoder"] and a["decoder"] == b["decoder"]
    assert a["encoder"]["variance"] != c["encoder"]["variance"]


@pytest.mark.parametrize("spec", ["trace:", "dreg:4", "iwae:1"])
def test_a_fresh_estimator_draws_like_a_used_one(spec):
    """The same seed gives the same draws whether or not the ELBO object ran before (make_elbo's
    default max_plate_nesting=None lets Pyro guess the nesting from a first, random, trace)."""
    model, guide, x, groups = _setup()
    spec, particles = (spec[:-1], 4) if spec.endswith(":") else (spec, 1)
    elbo = make_elbo(spec, particles)
    first = gradient_stats(elbo, model.model, guide.guide, (x,), {}, groups, draws=5, seed=1)
    again = gradient_stats(elbo, model.model, guide.guide, (x,), {}, groups, draws=5, seed=1)
    fresh = gradient_stats(make_elbo(spec, particles, max_plate_nesting=1), model.model, guide.guide,
                           (x,), {}, groups, draws=5, seed=1)
    for group in ("encoder", "decoder"):
        assert first[group] == again[group] == fresh[group], group


def test_param_groups_split_guide_and_model_tensors():
    model, guide, x, _ = _setup()

    class Pair:
        def model(self, x):
            model.model(x)

        def guide(self, x):
            guide.guide(x)

    groups = param_groups(Pair(), (x,))
    assert {id(p) for p in groups["guide"]} == {id(p) for p in guide.parameters()}
    assert {id(p) for p in groups["model"]} == {id(p) for p in model.parameters()}
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16], likelihood="gaussian")  # learned scale: a model param
    groups = pyrovae.param_groups(vae, (torch.rand(4, 1, 8, 8),))
    assert {id(p) for p in groups["guide"]} == {id(p) for p in vae.encoder.parameters()}
    assert {id(p) for p in groups["model"]} == {id(p) for p in [*vae.decoder.parameters(),
                                                                 *vae.likelihood.parameters()]}
    stats = gradient_stats(make_elbo("trace"), vae.model, vae.guide, (torch.rand(4, 1, 8, 8),), {},
                           groups, draws=3)
    assert stats["guide"]["coordinates"] == sum(p.numel() for p in vae.encoder.parameters())
    assert stats["model"]["mean_norm"] > 0


def test_unused_parameters_are_left_out_of_snr_and_draws_checked():
    model, guide, x, groups = _setup()
    groups["encoder"] = groups["encoder"] + [torch.zeros(3, requires_grad=True)]
    stats = gradient_stats(
        make_elbo("trace"), model.model, guide.guide, (x,), {}, groups, draws=10
    )
    assert math.isfinite(stats["encoder"]["snr"])
    assert stats["encoder"]["coordinates"] == sum(p.numel() for p in guide.parameters()) + 3
    with pytest.raises(ValueError, match="draws must be >= 2"):
        gradient_stats(make_elbo("trace"), model.model, guide.guide, (x,), {}, groups, draws=1)


def test_stl_has_zero_encoder_variance_at_the_posterior():
    model, guide, x, groups = _setup(posterior=True)
    stl = gradient_stats(make_elbo("stl"), model.model, guide.guide, (x,), {}, groups, 20)
    trace = gradient_stats(make_elbo("trace"), model.model, guide.guide, (x,), {}, groups, 20)
    assert stl["encoder"]["variance"] < 1e-20
    assert trace["encoder"]["variance"] > 1e-2
    assert stl["decoder"]["variance"] == pytest.approx(trace["decoder"]["variance"], rel=1e-9)


def test_rainforth_snr_tighter_bounds_and_dreg():
    """Rainforth et al. 2018: with more importance samples the IWAE guide-gradient SNR falls
    while the model-gradient SNR rises; DReG's guide SNR rises with K (Tucker et al. 2019)."""
    model, guide, x, groups = _setup()

    def snr(spec):
        stats = gradient_stats(
            make_elbo(spec), model.model, guide.guide, (x,), {}, groups, draws=100
        )
        return stats["encoder"]["snr"], stats["decoder"]["snr"]

    iwae1, iwae64, dreg64 = snr("iwae:1"), snr("iwae:64"), snr("dreg:64")
    assert iwae64[0] < 0.5 * iwae1[0]
    assert iwae64[1] > 2 * iwae1[1]
    assert dreg64[0] > 10 * iwae64[0]
    assert dreg64[1] == pytest.approx(iwae64[1], rel=1e-6)  # same model gradient
