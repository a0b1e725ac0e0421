"""Deterministic and denoising auto-encoders in the same Pyro program and training loop."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import pyrovae
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.metrics import elbo_terms, log_likelihood
from pyrovae.infer.beta import KLWeight
from pyrovae.models.registry import build_model
from pyrovae.models.vae import VAE, AutoEncoder, DenoisingAutoEncoder
from pyrovae.training.loop import build_vae, train

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
    vae = AutoEncoder((1, 8, 8), z_dim=3, hidden=[16], likelihood="bernoulli")
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5))
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    loc, _ = vae.encoder(x)
    expected = -vae.likelihood.distribution(vae.decoder(loc)).log_prob(x).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    # beta has no effect: there is no prior term
    assert Trace_ELBO().loss(KLWeight(5.0)(vae.model), KLWeight(5.0)(vae.guide), x) \
        == pytest.approx(loss, rel=1e-6)
    tr = poutine.trace(vae.guide).get_trace(x)
    assert type(tr.nodes["latent"]["fn"].base_dist).__name__ == "Delta"
    assert tr.nodes["latent"]["mask"] is False  # no prior term: the latent is weighted 0
    assert isinstance(vae, VAE) and vae.spec["model"] == "ae"


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
    vae = DenoisingAutoEncoder((1, 8, 8), z_dim=3, hidden=[16], noise="mask:0.5")
    assert vae.spec["model"] == "dae" and vae.spec["noise"] == "mask:0.5"
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
    vae = AutoEncoder((1, 8, 8), z_dim=3, hidden=[16])
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.5))
    loc, scale = pyrovae.encode(vae, x)
    assert loc.shape == (5, 3) and torch.equal(scale, torch.zeros_like(loc))
    assert torch.equal(loc, vae.encoder(x)[0])
    terms = elbo_terms(vae, x)
    assert terms["elbo"] is None and terms["recon"] < 0
    with pytest.raises(PyrovaeError, match=r"an auto-encoder\): it defines no likelihood"):
        log_likelihood(vae, x, k=10)


@pytest.mark.parametrize("name,noise,match", [
    ("dae", "gaussian:-0.1", "noise level must be >= 0"),
    ("dae", "salt:0.1", "unknown --noise 'salt:0.1'"),
    ("dae", "mask:1.5", "below 1"),
    ("vae", "gaussian:0.1", r"noise \(--noise\) applies to the model 'dae' only, not 'vae'"),
    ("ae", "gaussian:0.1", "applies to the model 'dae' only, not 'ae'"),
    ("pca", None, "unknown model 'pca'"),
])
def test_bad_auto_encoder_arguments(name, noise, match):
    with pytest.raises(PyrovaeError, match=match):
        build_model(name, (1, 8, 8), 3, [16], "mlp", "bernoulli", None, noise)


def test_vae_takes_no_model_or_noise_arguments():
    for kwargs in (dict(model="ae"), dict(noise="gaussian:0.1")):
        with pytest.raises(TypeError):
            VAE((1, 8, 8), z_dim=3, hidden=[16], **kwargs)
    with pytest.raises(PyrovaeError, match="noise level must be >= 0"):
        DenoisingAutoEncoder((1, 8, 8), z_dim=3, hidden=[16], noise="gaussian:-0.1")
