"""Model zoo, part 1: VampPrior, two-layer VAE, IAF guide, gated dense layers, and model specs.

Numbers are checked against hand computations with torch distributions on the models' own
networks (same random draws where a draw is involved); every model is then driven once through
training with each kind of estimator, a KL schedule, a checkpoint and ``load_run``.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae import PyrovaeError
from pyrovae.infer.beta import KLWeight
from pyrovae.infer.registry import make_elbo
from pyrovae.models.flows import IAFVAE
from pyrovae.models.hierarchical import HierarchicalVAE
from pyrovae.models.registry import BUILTINS, OPTIONS, build_model, from_spec, model_name, parse_model
from pyrovae.models.vamp import VampVAE
from pyrovae.nn.nets import GatedDense, build_networks

SHAPE = (1, 8, 8)
SMALL = dict(z_dim=3, hidden=[16])


def binary_batch(digits, n=6):
    return torch.bernoulli(digits.test_x[:n], generator=torch.Generator().manual_seed(0))


def bernoulli_log_px(logits, x):
    return dist.Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))


def normal_log_prob(loc, scale, z):
    return dist.Normal(loc, scale).log_prob(z).sum(-1)


# --------------------------------------------------------------------------- gated dense layers


def test_gated_dense_is_the_linear_feature_times_its_sigmoid_gate():
    layer = GatedDense(2, 1)
    with torch.no_grad():
        layer.h.weight.copy_(torch.tensor([[1.0, -2.0]]))
        layer.h.bias.fill_(0.5)
        layer.g.weight.copy_(torch.tensor([[3.0, 1.0]]))
        layer.g.bias.fill_(-1.0)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    h = torch.tensor([1 - 4 + 0.5, -1 - 1 + 0.5])
    gate = torch.sigmoid(torch.tensor([3 + 2 - 1.0, -3 + 0.5 - 1.0]))
    torch.testing.assert_close(layer(x).squeeze(-1), h * gate)
    with torch.no_grad():
        layer.g.bias.fill_(-50.0)  # a closed gate lets nothing through
    assert layer(x).abs().max() < 1e-12


def test_gated_networks_shapes_and_layers():
    enc, dec = build_networks("gated", SHAPE, [16, 8], 3)
    assert sum(isinstance(m, GatedDense) for m in enc.modules()) == 2
    assert sum(isinstance(m, GatedDense) for m in dec.modules()) == 2
    assert not any(isinstance(m, torch.nn.Softplus) for m in [*enc.modules(), *dec.modules()])
    loc, scale = enc(torch.rand(2, 5, *SHAPE))  # particle dims pass through
    assert loc.shape == scale.shape == (2, 5, 3) and (scale > 0).all()
    assert dec(torch.randn(4, 5, 3)).shape == (4, 5, *SHAPE)
    with pytest.raises(PyrovaeError, match="mlp, gated, conv"):
        build_networks("gates", SHAPE, [16], 3)


# --------------------------------------------------------------------------- VampPrior


def test_vamp_prior_is_the_mean_of_the_encoders_gaussians_at_the_pseudo_inputs(digits):
    m = VampVAE(SHAPE, components=4, **SMALL)
    x = binary_batch(digits)
    u = m.pseudo_inputs.raw.clamp(0, 1)
    loc, scale = m.encoder(u)  # (4, 3)
    z = 2 * torch.randn(7, 3)
    by_hand = torch.logsumexp(normal_log_prob(loc, scale, z[:, None, :]), -1) - math.log(4)
    torch.testing.assert_close(m.prior().log_prob(z), by_hand)
    # the model's latent site is scored by that prior
    guide_tr = pyro.poutine.trace(m.guide).get_trace(x)
    model_tr = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=guide_tr)).get_trace(x)
    site = model_tr.nodes["latent"]
    z = site["value"]
    by_hand = torch.logsumexp(normal_log_prob(loc, scale, z[:, None, :]), -1) - math.log(4)
    torch.testing.assert_close(site["fn"].log_prob(z), by_hand)
    # no closed-form KL to a mixture: Monte Carlo, and the ELBO is recon - KL
    terms = pyrovae.elbo_terms(m, x)
    assert terms["kl_method"] == {"latent": "monte carlo"}
    assert terms["elbo"] == pytest.approx(terms["recon"] - terms["kl"])
    assert pyrovae.elbo_terms(build_model("vae", SHAPE, 3, [16], "mlp", "bernoulli", None),
                              x)["kl_method"] == {"latent": "closed form"}


def test_vamp_pseudo_inputs_get_gradients_and_stay_images():
    m = VampVAE(SHAPE, components=3, **SMALL)
    m.pseudo_inputs.raw.data[0, 0, 0, 0] = 1.7  # outside [0, 1]: clipped
    assert m.pseudo_inputs().min() >= 0 and m.pseudo_inputs().max() <= 1
    x = torch.bernoulli(torch.full((5, *SHAPE), 0.3))
    make_elbo("trace", max_plate_nesting=1).differentiable_loss(m.model, m.guide, x).backward()
    grad = m.pseudo_inputs.raw.grad
    assert grad is not None and grad.abs().sum() > 0
    assert grad[0, 0, 0, 0] == 0  # hardtanh passes no gradient where it clips


# --------------------------------------------------------------------------- two-layer VAE


def hvae_log_weights_by_hand(m, x, beta=1.0):
    """``log p(x|z1) + beta (log p(z2) + log p(z1|z2) - log q(z1|x) - log q(z2|z1))``, one draw
    per example in the guide's order (z1, then z2), written with torch distributions."""
    loc1, scale1 = m.encoder(x)
    z1 = torch.distributions.Normal(loc1, scale1).rsample()
    loc2, scale2 = m.q_z2(z1)
    z2 = torch.distributions.Normal(loc2, scale2).rsample()
    log_q = normal_log_prob(loc1, scale1, z1) + normal_log_prob(loc2, scale2, z2)
    log_prior = normal_log_prob(torch.zeros(m.z2_dim), torch.ones(m.z2_dim), z2) \
        + normal_log_prob(*m.p_z1(z2), z1)
    return bernoulli_log_px(m.decoder(z1), x) + beta * (log_prior - log_q)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_hvae_elbo_is_the_hand_written_two_layer_elbo_on_the_same_draws(digits, beta):
    m = HierarchicalVAE(SHAPE, z_dim=4, hidden=[16], z2=2)
    x = binary_batch(digits)
    pyro.set_rng_seed(5)
    loss = make_elbo("trace", max_plate_nesting=1).loss(KLWeight(beta)(m.model), KLWeight(beta)(m.guide), x)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        by_hand = hvae_log_weights_by_hand(m, x, beta)
    assert loss == pytest.approx(-by_hand.sum().item(), rel=1e-5)


def test_hvae_elbo_terms_and_log_px_against_monte_carlo(digits):
    """elbo_terms (closed-form KL for z2, Monte Carlo for z1) agrees with the hand-written ELBO
    within Monte Carlo error, and the importance-sampled log p(x) lies above it."""
    m = HierarchicalVAE(SHAPE, z_dim=4, hidden=[16], z2=2)
    x = binary_batch(digits, 8)
    reps = 300
    tiled = x.repeat(reps, 1, 1, 1)
    pyro.set_rng_seed(1)
    terms = pyrovae.elbo_terms(m, tiled)
    assert terms["kl_method"] == {"z1": "monte carlo", "z2": "closed form"}
    pyro.set_rng_seed(2)
    with torch.no_grad():
        lw = hvae_log_weights_by_hand(m, tiled)
    se = lw.std().item() / math.sqrt(len(lw))
    assert abs(terms["elbo"] - lw.mean().item()) < 4 * math.sqrt(2) * se, (terms["elbo"], lw.mean(), se)
    pyro.set_rng_seed(3)
    log_px = pyrovae.log_likelihood(m, x, 500)
    per_example = lw.reshape(reps, len(x)).mean(0)
    assert (log_px > per_example).all(), (log_px, per_example)


# --------------------------------------------------------------------------- IAF guide


def test_iaf_guide_density_is_the_base_density_minus_the_log_determinants(digits):
    m = IAFVAE(SHAPE, flows=2, **SMALL)
    x = binary_batch(digits)
    pyro.set_rng_seed(4)
    site = pyro.poutine.trace(m.guide).get_trace(x).nodes["latent"]
    fn, z = site["fn"], site["value"]
    assert isinstance(fn, dist.TransformedDistribution) and len(fn.transforms) == 2
    pyro.set_rng_seed(4)
    with torch.no_grad():
        loc, scale = m.encoder(x)
        context = torch.cat([loc, scale.log()], -1)
        z0 = torch.distributions.Normal(loc, scale).rsample()
        y, log_det = z0, 0.0
        for flow in m.flows:  # y <- exp(s) y + m, with (m, s) from the masked network
            shift, log_scale = flow.nn(y, context=context)
            assert log_scale.abs().max() < 3  # inside Pyro's clip: no clamping to write out
            y = log_scale.exp() * y + shift
            log_det = log_det + log_scale.sum(-1)
        by_hand = normal_log_prob(loc, scale, z0) - log_det
        torch.testing.assert_close(z, y)
        torch.testing.assert_close(fn.log_prob(z), by_hand)  # the cached inverse
        torch.testing.assert_close(fn.log_prob(z.clone()), by_hand, atol=1e-4, rtol=1e-4)  # inverted
        # and TransformedDistribution's own density, built afresh from the same pieces
        fresh = dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1),
                                             [flow.condition(context) for flow in m.flows])
        torch.testing.assert_close(fresh.log_prob(z.clone()), by_hand, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- specs and options


def test_model_specs_parse_and_round_trip():
    assert parse_model("vamp:components=50") == ("vamp", {"components": 50})
    assert parse_model("hvae: z1 = 6 , z2=3") == ("hvae", {"z1": 6, "z2": 3})
    assert parse_model("iaf") == ("iaf", {})
    for spec in ("vae", "vamp:components=7", "hvae", "hvae:z1=6", "iaf:flows=3"):
        m = build_model(spec, SHAPE, 4, [16], "gated", "bernoulli", None)
        name = model_name(m)
        assert from_spec(m.spec).spec == m.spec
        again = build_model(name, SHAPE, 4, [16], "gated", "bernoulli", None)
        assert again.spec == m.spec and model_name(again) == name
        assert type(again) is BUILTINS[spec.partition(":")[0]]
    assert model_name(build_model("hvae", SHAPE, 4, [16], "mlp", "bernoulli", None)) == "hvae:z1=4,z2=2"
    assert model_name(build_model("vamp", SHAPE, 4, [16], "mlp", "bernoulli", None)) \
        == "vamp:components=500"
    assert model_name(build_model("vae", SHAPE, 4, [16], "mlp", "bernoulli", None)) == "vae"
    assert set(OPTIONS) <= set(BUILTINS)


@pytest.mark.parametrize("spec, message", [
    ("vamp:size=3", r"vamp has no option 'size=3'; its options are components="),
    ("hvae:z3=2", r"its options are z1=, z2="),
    ("vamp:components", r"has no option 'components'"),
    ("vamp:components=5,components=6", r"repeats 'components'"),
    ("vae:z1=3", r"vae has no option 'z1=3'; its options are none"),
    ("vamp:components=many", r"option components must be a whole number, got 'many'"),
    ("iaf:flows=2.5", r"option flows must be a whole number"),
    ("vamp:components=0", r"components must be a whole number >= 1, got 0"),
    ("hvae:z2=0", r"z2 must be a whole number >= 1"),
    ("iaf:flows=-1", r"flows must be a whole number >= 1"),
    ("vampire", r"unknown model 'vampire': choose one of vae, ae, dae, vamp, hvae, iaf"),
])
def test_bad_model_specs_are_refused_with_the_valid_options(spec, message):
    with pytest.raises(PyrovaeError, match=message):
        build_model(spec, SHAPE, 4, [16], "mlp", "bernoulli", None)


def test_option_errors_name_the_flag_under_the_command_line():
    from pyrovae import checks
    with checks.command_line(), pytest.raises(PyrovaeError, match=r"--model vamp:components=K must"):
        build_model("vamp:components=0", SHAPE, 4, [16], "mlp", "bernoulli", None)


# --------------------------------------------------------------------------- through training


ZOO = ["vae", "vamp:components=10", "hvae", "iaf:flows=2"]
ESTIMATORS = ["trace", "iwae:3", "dreg:2"]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("spec", ZOO)
def test_zoo_trains_checkpoints_and_reloads(spec, estimator, digits, tmp_path, single_thread):
    """One short epoch per model and estimator, gated networks and a linear KL warm-up; the
    reloaded run gives the same log p(x). ``hvae``'s guide is hierarchical: ``dreg`` refuses it."""
    options = dict(model=spec, data=digits, limit=64, epochs=1, batch_size=32, estimator=estimator,
                   net="gated", hidden=[16], z_dim=4, kl_schedule="linear:steps=4",
                   run_dir=tmp_path / "run", progress=False, figures=False)
    if spec == "hvae" and estimator.startswith("dreg"):
        with pytest.raises(PyrovaeError, match="guide site 'z2' depends on the value of 'z1'"):
            pyrovae.train(**options)
        return
    run = pyrovae.train(**options)
    last = run.metrics[-1]
    assert all(math.isfinite(last[k]) for k in ("train_loss", "test_elbo", "test_recon", "test_kl"))
    assert run.config.model == spec and model_name(run.model).startswith(spec.partition(":")[0])
    x = run.data.test_x[:16]
    pyro.set_rng_seed(7)
    ll = pyrovae.log_likelihood(run.model, x, 4)
    assert torch.isfinite(ll).all()
    pyro.clear_param_store()
    back = pyrovae.load_run(tmp_path / "run", data=False)
    assert type(back.model) is type(run.model) and back.model.spec == run.model.spec
    pyro.set_rng_seed(7)
    torch.testing.assert_close(pyrovae.log_likelihood(back.model, x, 4), ll)


def test_vamp_default_components_train_on_digits(digits, single_thread):
    run = pyrovae.train(model="vamp", data=digits, limit=64, epochs=1, batch_size=32, hidden=[16],
                        z_dim=4, progress=False, figures=False)
    assert run.model.pseudo_inputs.raw.shape == (500, *SHAPE)
    assert math.isfinite(run.metrics[-1]["test_elbo"])


def test_iaf_trains_with_sticking_the_landing(digits, single_thread):
    """stl scores the draw with its path cut, through the flow's inverse: it trains."""
    run = pyrovae.train(model="iaf", data=digits, limit=64, epochs=1, batch_size=32, hidden=[16],
                        z_dim=4, estimator="stl", progress=False, figures=False)
    assert math.isfinite(run.metrics[-1]["test_elbo"])


def test_iaf_reconstruct_decodes_the_flow_of_the_base_mean(digits):
    m = IAFVAE(SHAPE, **SMALL)
    x = binary_batch(digits)
    loc, scale = m.encoder(x)
    z = loc
    for t in m.posterior(loc, scale).transforms:
        z = t(z)
    torch.testing.assert_close(m.reconstruct(x), torch.sigmoid(m.decoder(z)))
    assert not torch.allclose(m.reconstruct(x), torch.sigmoid(m.decoder(loc)))


def test_hvae_decode_acts_on_z1():
    m = HierarchicalVAE(SHAPE, z_dim=5, hidden=[16])
    assert m.z_dim == 5 and m.z2_dim == 2 and m.spec["z_dim"] == 5
    assert m.decode(torch.zeros(3, 5)).shape == (3, *SHAPE)
