"""The Pyro program: site names and shapes, beta from the KLWeight handler, and the loss it defines."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

import pyrovae
from pyrovae.errors import PyrovaeError
from pyrovae.infer.beta import KLWeight, kl_weight
from pyrovae.infer.registry import make_elbo
from pyrovae.models.registry import build_model, from_spec
from pyrovae.models.vae import VAE
from pyrovae.nn.likelihoods import LIKELIHOODS


def traces(vae, x, beta=1.0):
    guide_tr = poutine.trace(KLWeight(beta)(vae.guide)).get_trace(x)
    model_tr = poutine.trace(poutine.replay(KLWeight(beta)(vae.model), trace=guide_tr)).get_trace(x)
    return guide_tr, model_tr


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_sites_and_shapes(net, likelihood):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16], net=net, likelihood=likelihood)
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5))
    guide_tr, model_tr = traces(vae, x)
    guide_samples = [n for n, s in guide_tr.nodes.items()
                     if s["type"] == "sample" and not site_is_subsample(s)]
    model_samples = [n for n, s in model_tr.nodes.items()
                     if s["type"] == "sample" and not site_is_subsample(s)]
    assert guide_samples == ["latent"] and model_samples == ["latent", "obs"]
    for tr in (guide_tr, model_tr):
        site = tr.nodes["latent"]
        assert site["fn"].batch_shape == (5,) and site["fn"].event_shape == (3,)
        assert site["cond_indep_stack"][0].name == "data"
    obs = model_tr.nodes["obs"]
    assert obs["is_observed"] and obs["fn"].batch_shape == (5,) and obs["fn"].event_shape == (1, 8, 8)
    assert torch.equal(obs["value"], x)
    # the model's latent is the guide's draw, and the decoder is registered with Pyro
    assert torch.equal(model_tr.nodes["latent"]["value"], guide_tr.nodes["latent"]["value"])
    assert any(name.startswith("decoder$$$") for name in model_tr.nodes)
    assert any(name.startswith("encoder$$$") for name in guide_tr.nodes)
    if likelihood in ("gaussian", "laplace"):
        assert any(name.startswith("likelihood$$$") for name in model_tr.nodes)


def test_model_and_guide_take_the_batch_only():
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16])
    x = torch.rand(4, 1, 8, 8)
    for fn in (vae.model, vae.guide):
        with pytest.raises(TypeError):
            fn(x, 1.0)
    program = pyrovae.models.contract.inspect_program(vae, (x,))
    assert program.latent == ("latent",) and program.observed == ("obs",)
    assert program.max_plate_nesting == 1 and program.batch_plate == "data"


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_networks_accept_particle_dims(net):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16], net=net)
    z = torch.randn(7, 5, 3)
    assert vae.decoder(z).shape == (7, 5, 1, 8, 8)
    loc, scale = vae.encoder(torch.rand(7, 5, 1, 8, 8))
    assert loc.shape == (7, 5, 3) and (scale > 0).all()


def _recon_and_kl(vae, x, seed):
    """One draw's reconstruction term, Monte Carlo KL and analytic KL, summed over the batch."""
    pyro.set_rng_seed(seed)
    guide_tr, model_tr = traces(vae, x)
    z = guide_tr.nodes["latent"]["value"]
    q, p = guide_tr.nodes["latent"]["fn"], model_tr.nodes["latent"]["fn"]
    recon = model_tr.nodes["obs"]["fn"].log_prob(x).sum()
    return recon, (q.log_prob(z) - p.log_prob(z)).sum(), kl_divergence(q, p).sum()


ESTIMATORS = {
    "pyro-trace": Trace_ELBO, "pyro-meanfield": TraceMeanField_ELBO,
    "trace": lambda: make_elbo("trace"), "meanfield": lambda: make_elbo("meanfield"),
}


@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0, 4.0, torch.tensor(0.25)])
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_loss_at_beta_is_recon_plus_beta_kl(beta, estimator):
    torch.manual_seed(1)
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16])
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    elbo = ESTIMATORS[estimator]()
    pyro.set_rng_seed(7)
    loss = elbo.loss(KLWeight(beta)(vae.model), KLWeight(beta)(vae.guide), x)
    recon, kl_mc, kl_exact = _recon_and_kl(vae, x, seed=7)
    kl = kl_exact if estimator.endswith("meanfield") else kl_mc
    expected = -(recon - float(beta) * kl).item()
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-4)
    # the context-manager form is the same loss
    pyro.set_rng_seed(7)
    with kl_weight(beta):
        assert elbo.loss(vae.model, vae.guide, x) == pytest.approx(loss, rel=1e-6, abs=1e-6)


def test_beta_zero_drops_the_kl_from_the_gradient():
    torch.manual_seed(2)
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16])
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    pyro.set_rng_seed(3)
    Trace_ELBO().loss_and_grads(kl_weight(0.0, fn=vae.model), kl_weight(0.0, fn=vae.guide), x)
    got = [p.grad.clone() for p in vae.encoder.parameters()]
    vae.zero_grad()
    recon, kl, _ = _recon_and_kl(vae, x, seed=3)
    (-recon).backward()
    want = [p.grad for p in vae.encoder.parameters()]
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5)
    # and the KL part alone would have changed it: the test can fail
    vae.zero_grad()
    recon, kl, _ = _recon_and_kl(vae, x, seed=3)
    (-recon + kl).backward()
    assert not all(torch.allclose(g, p.grad, atol=1e-5)
                   for g, p in zip(got, vae.encoder.parameters(), strict=True))


def test_tensor_beta_scales_like_a_number():
    torch.manual_seed(4)
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16])
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    for b in (0.0, 0.5):
        pyro.set_rng_seed(5)
        a = Trace_ELBO().loss(KLWeight(b)(vae.model), KLWeight(b)(vae.guide), x)
        pyro.set_rng_seed(5)
        t = torch.tensor(b)
        t_loss = Trace_ELBO().loss(KLWeight(t)(vae.model), KLWeight(t)(vae.guide), x)
        assert a == pytest.approx(t_loss, rel=1e-6)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_beta_is_a_clear_error(bad):
    with pytest.raises(PyrovaeError, match="beta must be a finite number >= 0"):
        kl_weight(bad)


def test_bad_network_arguments():
    with pytest.raises(PyrovaeError, match="divisible by 4"):
        VAE((1, 10, 10), net="conv")
    with pytest.raises(PyrovaeError, match="unknown --net 'rnn'"):
        VAE((1, 8, 8), net="rnn")
    with pytest.raises(PyrovaeError, match="--z-dim must be >= 1"):
        VAE((1, 8, 8), z_dim=0)


def test_spec_names_the_model_and_rebuilds_it():
    for name in ("vae", "ae", "dae"):
        m = build_model(name, (1, 8, 8), 3, [16], "mlp", "gaussian", 0.1,
                        "mask:0.2" if name == "dae" else None)
        assert m.spec["model"] == name and type(m) is pyrovae.BUILTINS[name]
        again = from_spec(m.spec)
        assert type(again) is type(m) and again.spec == m.spec
        again.load_state_dict(m.state_dict())  # same architecture


def test_sample_and_reconstruct_are_images_in_unit_interval():
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16])
    s = pyrovae.sample(vae, 10, seed=0)
    r = vae.reconstruct(torch.rand(4, 1, 8, 8))
    assert s.shape == (10, 1, 8, 8) and r.shape == (4, 1, 8, 8)
    assert ((s >= 0) & (s <= 1)).all() and ((r >= 0) & (r <= 1)).all()
    assert torch.equal(s, pyrovae.sample(vae, 10, seed=0))
    assert not torch.equal(s, pyrovae.sample(vae, 10, seed=1))
    # the generic reconstruction is the built-in's
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(pyrovae.reconstruct(vae, x), vae.reconstruct(x), atol=1e-6)


def test_prior_samples_decode_standard_normal_codes():
    """pyrovae.sample runs the model's prior: the VAE's z ~ N(0, I), decoded to the mean image."""
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16]).eval()
    s = pyrovae.sample(vae, 20_000, seed=0)
    # the mean image over prior draws is E_z[decode(z)]; compare with independent codes
    z = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(1))
    ref = vae.decode(z)
    se = (s.std(0) ** 2 / len(s) + ref.std(0) ** 2 / len(ref)).sqrt()
    assert ((s.mean(0) - ref.mean(0)).abs() < 5 * se + 1e-6).all()
    # and not the decoding of codes from a different prior (the check has power)
    far = vae.decode(3.0 + z)
    assert ((s.mean(0) - far.mean(0)).abs() > 5 * se).any()
