"""Deterministic and denoising auto-encoders in the same Pyro program and training loop."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyrovae.errors import PyrovaeError
from pyrovae.evaluation import elbo_terms, log_likelihood
from pyrovae.training import build_vae, train
from pyrovae.vae import VAE

GREY = dict(dataset="digits", binarize="none", likelihood="gaussian", obs_scale=0.1, epochs=8,
            hidden=[64], z_dim=4)


def mse(vae, x_in, x_clean):
    vae.eval()
    return ((vae.reconstruct(x_in) - x_clean) ** 2).mean().item()


@pytest.fixture(scope="module")
def fitted(digits):
    data = digits.subset(900, 180)
    return {m: train(data=data, model=m, progress=False, **GREY) for m in ("ae", "dae")}


def test_ae_loss_is_the_reconstruction_log_likelihood():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16], model="ae", likelihood="bernoulli")
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5))
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    loc, _ = vae.encoder(x)
    expected = -vae.likelihood.distribution(vae.decoder(loc)).log_prob(x).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    # beta has no effect: there is no prior term
    assert Trace_ELBO().loss(vae.model, vae.guide, x, 5.0) == pytest.approx(loss, rel=1e-6)
    tr = poutine.trace(vae.guide).get_trace(x)
    assert type(tr.nodes["latent"]["fn"].base_dist).__name__ == "Delta"


def test_ae_and_dae_reduce_reconstruction_error(digits, fitted):
    data = fitted["ae"].data
    for model, run in fitted.items():
        untrained = build_vae(run.config, data.shape)
        assert mse(run.vae, data.test_x, data.test_x) < 0.5 * mse(untrained, data.test_x,
                                                                  data.test_x), model
        assert run.metrics[-1]["test_recon"] > run.metrics[0]["test_recon"]
        assert run.metrics[-1]["test_elbo"] is None and run.metrics[-1]["test_kl"] is None


def test_dae_reconstructs_noisy_inputs_better_than_the_ae(fitted):
    x = fitted["ae"].data.test_x
    torch.manual_seed(1)
    noisy = x + 0.3 * torch.randn_like(x)  # the DAE's default corruption, gaussian:0.3
    assert mse(fitted["dae"].vae, noisy, x) < mse(fitted["ae"].vae, noisy, x)


def test_dae_corrupts_only_while_training():
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16], model="dae", noise="mask:0.5")
    x = torch.rand(4, 1, 8, 8)
    vae.eval()
    a = poutine.trace(vae.guide).get_trace(x).nodes["latent"]["value"]
    b = poutine.trace(vae.guide).get_trace(x).nodes["latent"]["value"]
    assert torch.equal(a, b)
    vae.train()
    pyro.set_rng_seed(0)
    c = poutine.trace(vae.guide).get_trace(x).nodes["latent"]["value"]
    assert not torch.equal(a, c)


def test_point_codes_have_zero_scale_and_no_likelihood_bound():
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16], model="ae")
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5))
    loc, scale = vae.encode(x)
    assert torch.equal(scale, torch.zeros_like(loc))
    terms = elbo_terms(vae, x)
    assert terms["elbo"] is None and terms["recon"] < 0
    with pytest.raises(PyrovaeError, match="auto-encoder .* defines no likelihood"):
        log_likelihood(vae, x, k=10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(model="dae", noise="gaussian:-0.1"), "noise level must be >= 0"),
    (dict(model="dae", noise="salt:0.1"), "unknown --noise 'salt:0.1'"),
    (dict(model="dae", noise="mask:1.5"), "below 1"),
    (dict(model="vae", noise="gaussian:0.1"), "--noise applies to --model dae only"),
    (dict(model="pca"), "unknown --model 'pca'"),
])
def test_bad_auto_encoder_arguments(kwargs, match):
    with pytest.raises(PyrovaeError, match=match):
        VAE((1, 8, 8), z_dim=3, hidden=[16], **kwargs)
