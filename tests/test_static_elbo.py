"""The capture-ready losses of pyrovae.static_elbo: same value and gradient as the registry's
estimators for the same draws, and no host synchronisation."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

from pyrovae.errors import PyrovaeError
from pyrovae.estimators import no_rsample
from pyrovae.objectives import make_elbo
from pyrovae.static_elbo import CAPTURABLE, StaticELBO, capture_problem, static_loss
from pyrovae.vae import OBS, VAE

# (spec, num_particles): every capture-ready estimator, with and without particles
SPECS = [
    ("trace", 1), ("trace", 3), ("meanfield", 1), ("meanfield", 3), ("stl", 1), ("stl", 3),
    ("iwae:4", 1), ("renyi:0.5,4", 1), ("dreg:4", 1),
]
SEED = 5


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def _vae(model: str = "vae") -> VAE:
    torch.manual_seed(3)
    return VAE((1, 4, 4), z_dim=3, hidden=[8], model=model)


def _data(n: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1)))


def _grads(vae: VAE) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in vae.parameters()]


def _registry(vae: VAE, x, beta, spec: str, particles: int = 1) -> tuple[float, list[torch.Tensor]]:
    """Loss and gradients of the registry estimator for the draws of :data:`SEED`."""
    pyro.clear_param_store()
    vae.zero_grad()
    pyro.set_rng_seed(SEED)
    loss = make_elbo(spec, particles).loss_and_grads(vae.model, vae.guide, x, beta)
    return loss, _grads(vae)


def _static(vae: VAE, x, beta, spec: str, particles: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    pyro.clear_param_store()
    vae.zero_grad()
    pyro.set_rng_seed(SEED)
    loss = static_loss(vae, x, beta, spec, particles)
    loss.backward()
    return loss.detach(), _grads(vae)


def _assert_same(static: tuple, registry: tuple) -> None:
    (loss, grads), (ref_loss, ref_grads) = static, registry
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-4)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, ref, rtol=1e-4, atol=1e-5), (g - ref).abs().max()


@pytest.mark.parametrize("beta", [0.7, 1.0])
@pytest.mark.parametrize("spec, particles", SPECS)
def test_matches_registry_loss_and_gradient(spec, particles, beta):
    vae, x, b = _vae(), _data(), torch.tensor(beta)
    _assert_same(_static(vae, x, b, spec, particles), _registry(vae, x, b, spec, particles))


@pytest.mark.parametrize("spec", ["trace", "stl", "iwae:4", "dreg:4"])
def test_python_float_and_zero_tensor_beta(spec):
    vae, x = _vae(), _data()
    _assert_same(_static(vae, x, 0.5, spec), _registry(vae, x, 0.5, spec))
    _assert_same(_static(vae, x, torch.tensor(0.0), spec), _registry(vae, x, torch.tensor(0.0), spec))


@pytest.mark.parametrize("spec", ["iwae", "renyi:0.5", "dreg:1"])
def test_one_particle_bounds_are_the_elbo(spec):
    """RenyiELBO with K = 1 is the ELBO with Trace_ELBO's gradient; DReG with K = 1 is STL."""
    vae, x, beta = _vae(), _data(), torch.tensor(0.7)
    static = _static(vae, x, beta, spec)
    _assert_same(static, _registry(vae, x, beta, spec))
    _assert_same(static, _registry(vae, x, beta, "stl" if spec.startswith("dreg") else "trace"))


@pytest.mark.parametrize("spec, particles", SPECS)
def test_autoencoder_reduces_to_reconstruction(spec, particles):
    """Point codes, masked latent site: every estimator is log p(x | decoder(encoder(x)))."""
    vae, x, beta = _vae("ae"), _data(), torch.tensor(0.7)
    static = _static(vae, x, beta, spec, particles)
    _assert_same(static, _registry(vae, x, beta, "trace"))
    with torch.no_grad():
        recon = vae.likelihood.distribution(vae.decoder(vae.encoder(x)[0])).log_prob(x).sum()
    assert static[0].item() == pytest.approx(-recon.item(), rel=1e-5)
    _assert_same(static, _registry(vae, x, beta, spec, particles))


def test_dreg_treats_a_masked_latent_site_as_weight_zero():
    """A float beta = 0 masks the latent site: same gradient as a tensor beta = 0 (scale 0)."""
    vae, x = _vae(), _data()
    _assert_same(_static(vae, x, 0.0, "dreg:4"), _registry(vae, x, torch.tensor(0.0), "dreg:4"))
    _assert_same(_static(vae, x, torch.tensor(0.0), "dreg:4"), _registry(vae, x, 0.0, "dreg:4"))


def test_mask_tensor_of_ones_changes_nothing():
    vae, x, beta = _vae(), _data(), torch.tensor(0.7)
    keep = poutine.mask(mask=torch.ones(len(x), dtype=torch.bool))
    pyro.set_rng_seed(SEED)
    loss = StaticELBO("dreg:4")(keep(vae.model), keep(vae.guide), x, beta)
    loss.backward()
    _assert_same((loss.detach(), _grads(vae)), _registry(vae, x, beta, "dreg:4"))


@pytest.mark.parametrize("spec", ["trace", "dreg:4"])
def test_denoising_autoencoder(spec):
    """The guide's corruption noise is drawn in the same order as under the registry's ELBO."""
    vae, x, beta = _vae("dae"), _data(), torch.tensor(1.0)
    _assert_same(_static(vae, x, beta, spec), _registry(vae, x, beta, "trace"))


def test_loss_is_a_sum_over_the_batch():
    vae, x = _vae("ae"), _data(3)
    one = static_loss(vae, x, torch.tensor(1.0))
    two = static_loss(vae, torch.cat([x, x]), torch.tensor(1.0))
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)


def test_spec_is_parsed_once(monkeypatch):
    loss_fn = StaticELBO("renyi:0.5,4")
    assert (loss_fn.name, loss_fn.num_particles, loss_fn.alpha) == ("renyi", 4, 0.5)
    monkeypatch.setattr("pyrovae.static_elbo.make_elbo", None)  # a call must not parse again
    vae = _vae()
    assert torch.isfinite(loss_fn(vae.model, vae.guide, _data(), torch.tensor(1.0)))


def test_capture_problem():
    assert {spec.partition(":")[0] for spec, _ in SPECS} == set(CAPTURABLE)
    for spec, particles in SPECS:
        assert capture_problem(spec, particles) is None
    assert capture_problem("dreg:8") is None and capture_problem("renyi:0.5") is None
    for spec in ("score", "graph", "jit", "tail-adaptive:4"):
        why = capture_problem(spec)
        assert isinstance(why, str) and spec.partition(":")[0] in why
        with pytest.raises(PyrovaeError, match="no capture-ready loss"):
            StaticELBO(spec)
    for spec in ("nonsense", "iwae:0", "renyi"):
        with pytest.raises(PyrovaeError):
            capture_problem(spec)
    with pytest.raises(PyrovaeError, match="num_particles"):
        capture_problem("trace", 0)


def test_rejects_non_reparameterized_guides():
    vae = _vae()
    with pytest.raises(PyrovaeError, match="reparameterized"):
        StaticELBO("trace")(vae.model, no_rsample()(vae.guide), _data(), torch.tensor(1.0))


@pytest.mark.parametrize("model", ["vae", "ae"])
@pytest.mark.parametrize("spec, particles", SPECS)
def test_no_host_sync(spec, particles, model, forbid_host_sync):
    vae, x, beta = _vae(model), _data(), torch.tensor(0.7)
    loss_fn = StaticELBO(spec, particles)
    with forbid_host_sync():
        loss = loss_fn(vae.model, vae.guide, x, beta)
        loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.decoder.parameters())


def test_host_sync_guard_is_not_vacuous(forbid_host_sync):
    vae, x, t = _vae(), _data(), torch.ones(())
    with forbid_host_sync():
        for read in (lambda: t.item(), lambda: bool(t), lambda: float(t), lambda: t.tolist(),
                     lambda: torch.tensor(0.5)):
            with pytest.raises(AssertionError, match="host synchronisation"):
                read()
        with pytest.raises(AssertionError, match="host synchronisation"):
            pyro.infer.Trace_ELBO().loss_and_grads(vae.model, vae.guide, x, t)
    assert t.item() == 1.0 and bool(t)  # restored on exit


def test_reads_the_observation_site():
    """The observation enters once, scaled by nothing: trace with beta 0 is the reconstruction."""
    vae, x = _vae(), _data()
    pyro.set_rng_seed(SEED)
    loss = static_loss(vae, x, torch.tensor(0.0))
    pyro.set_rng_seed(SEED)
    guide = poutine.trace(vae.guide).get_trace(x, 1.0)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, 1.0)
    obs = model.nodes[OBS]
    assert loss.item() == pytest.approx(-obs["fn"].log_prob(obs["value"]).sum().item(), rel=1e-6)
