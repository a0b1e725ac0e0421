"""The estimator registry: spec parsing, clear errors, and every entry on a small VAE."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrovae.errors import PyrovaeError
from pyrovae.estimators import (
    IWAE_ELBO,
    STL_ELBO,
    DReG_ELBO,
    MeanField_ELBO,
    TailAdaptive_ELBO,
)
from pyrovae.objectives import describe_estimators, estimator_names, make_elbo

# One spec per registry entry (the smoke test below checks this list covers the registry).
SMOKE_SPECS = [
    "trace", "meanfield", "graph", "jit", "score", "stl",
    "iwae:3", "renyi:0.5,3", "dreg:3", "tail-adaptive:3",
]  # fmt: skip
NEEDS_REPARAM = ["meanfield", "stl", "iwae:3", "renyi:0.5,3", "dreg:3", "tail-adaptive:3"]


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


# --------------------------------------------------------------------------- a small VAE


class Encoder(nn.Module):
    def __init__(self, pixels=16, hidden=8, z_dim=2):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(-3), nn.Linear(pixels, hidden), nn.Tanh())
        self.loc, self.scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-3


class Decoder(nn.Module):
    """Accepts extra leading dims: z (..., Z) -> logits (..., 1, 4, 4)."""

    def __init__(self, z_dim=2, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, 16))

    def forward(self, z):
        return self.net(z).reshape(*z.shape[:-1], 1, 4, 4)


class TinyVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()

    def model(self, x, beta=1.0):
        pyro.module("decoder", self.decoder)
        n = x.shape[0]
        with pyro.plate("data", n):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample(
                    "latent", dist.Normal(x.new_zeros(n, 2), x.new_ones(n, 2)).to_event(1)
                )
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(3), obs=x)

    def guide(self, x, beta=1.0):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            with pyro.poutine.scale(scale=beta):
                pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


def _vae_and_data():
    torch.manual_seed(0)
    vae = TinyVAE()
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.3))
    return vae, x


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def _zero(vae):
    for p in vae.parameters():
        p.grad = None


def test_smoke_specs_cover_the_registry():
    assert sorted({s.partition(":")[0] for s in SMOKE_SPECS}) == estimator_names()
    assert len(describe_estimators()) == len(estimator_names())


@pytest.mark.parametrize("spec", SMOKE_SPECS)
@pytest.mark.parametrize("beta", [1.0, torch.tensor(0.5)])
def test_every_entry_trains_the_vae(spec, beta):
    """The training loop's call works for every entry: a finite loss, finite non-zero
    gradients for encoder and decoder; ``loss`` gives the same value on the same samples; and
    ``differentiable_loss`` (all but Pyro's RenyiELBO and TraceGraph_ELBO) gives the same value
    and gradients."""
    vae, x = _vae_and_data()
    particles = 1 if ":" in spec else 3
    elbo = make_elbo(spec, particles)
    elbo.loss_and_grads(vae.model, vae.guide, x, beta=beta)  # warm-up (jit compiles here)
    _zero(vae)

    torch.manual_seed(1)
    loss = elbo.loss_and_grads(vae.model, vae.guide, x, beta=beta)
    assert isinstance(loss, float) and math.isfinite(loss) and loss > 0
    grads = {name: _grads(getattr(vae, name)) for name in ("encoder", "decoder")}
    for name, gs in grads.items():
        assert all(torch.isfinite(g).all() for g in gs), name
        assert sum(g.norm() for g in gs) > 1e-6, name

    torch.manual_seed(1)
    assert elbo.loss(vae.model, vae.guide, x, beta=beta) == pytest.approx(loss, rel=1e-5)

    name = spec.partition(":")[0]
    assert hasattr(elbo, "differentiable_loss") == (name not in ("iwae", "renyi", "graph"))
    if hasattr(elbo, "differentiable_loss"):
        _zero(vae)
        torch.manual_seed(1)
        value = elbo.differentiable_loss(vae.model, vae.guide, x, beta=beta)
        assert value.item() == pytest.approx(loss, rel=1e-5)
        value.backward()
        for module in ("encoder", "decoder"):
            for a, b in zip(_grads(getattr(vae, module)), grads[module], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    "spec,particles,cls,k,alpha",
    [
        ("iwae:10", 1, IWAE_ELBO, 10, 0.0),
        ("iwae", 4, IWAE_ELBO, 4, 0.0),
        (" iwae : 7 ", 7, IWAE_ELBO, 7, 0.0),
        ("renyi:0.5,10", 1, IWAE_ELBO, 10, 0.5),
        ("renyi:0.25", 3, IWAE_ELBO, 3, 0.25),
        ("dreg:10", 1, DReG_ELBO, 10, None),
        ("stl", 5, STL_ELBO, 5, None),
        ("tail-adaptive:10", 1, TailAdaptive_ELBO, 10, None),
        ("trace", 1, pyro.infer.Trace_ELBO, 1, None),
        ("meanfield", 2, MeanField_ELBO, 2, None),
        ("graph", 1, pyro.infer.TraceGraph_ELBO, 1, None),
        ("jit", 1, pyro.infer.JitTrace_ELBO, 1, None),
    ],
)
def test_spec_parsing(spec, particles, cls, k, alpha):
    elbo = make_elbo(spec, particles)
    assert isinstance(elbo, cls)
    assert elbo.num_particles == k
    assert elbo.vectorize_particles == (k > 1)
    assert elbo.max_plate_nesting == 1 + (k > 1)  # the particle plate sits left of "data"
    if alpha is not None:
        assert elbo.alpha == alpha
    if cls is TailAdaptive_ELBO:
        assert make_elbo("tail-adaptive:4,-0.5").tail_adaptive_beta == -0.5


@pytest.mark.parametrize(
    "spec,particles,message",
    [
        ("elbo", 1, "unknown estimator 'elbo'"),
        ("iwea:5", 1, "did you mean 'iwae'"),
        ("", 1, "unknown estimator ''"),
        ("iwae:0", 1, "K (the number of particles) must be >= 1, got 0"),
        ("dreg:-3", 1, "must be >= 1"),
        ("iwae:2.5", 1, "K must be an integer, got '2.5'"),
        ("iwae:3,4", 1, "takes at most 1 arguments"),
        ("renyi", 1, "needs alpha"),
        ("renyi:1", 1, "alpha = 1 is the ELBO itself: use 'trace'"),
        ("renyi:-0.5,3", 1, "alpha must be finite and >= 0"),
        ("renyi:nan,3", 1, "alpha must be finite"),
        ("renyi:abc", 1, "alpha must be a number"),
        ("trace:5", 1, "takes no arguments"),
        ("tail-adaptive", 1, "needs at least 2 particles"),
        ("tail-adaptive:5,0.5", 1, "-1 <= beta < 0"),
        ("iwae:10", 5, "the particle count is given twice"),
        ("trace", 0, "num_particles must be an integer >= 1"),
        ("trace", 2.0, "num_particles must be an integer >= 1"),
    ],
)
def test_bad_specs_name_the_problem(spec, particles, message):
    with pytest.raises(PyrovaeError) as info:
        make_elbo(spec, particles)
    assert message in str(info.value)
    if spec == "elbo":  # the fix: the list of valid names
        assert all(name in str(info.value) for name in estimator_names())


# --------------------------------------------------------------------------- wrong model kinds


def _discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("latent", dist.Bernoulli(0.5))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x)


def _discrete_guide(x):
    probs = pyro.param("probs", torch.full((x.shape[0],), 0.5))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("latent", dist.Bernoulli(probs))


@pytest.mark.parametrize("spec", NEEDS_REPARAM)
def test_reparameterized_estimators_reject_a_discrete_latent(spec):
    elbo = make_elbo(spec)
    with pytest.raises(PyrovaeError, match="guide site 'latent' draws from Bernoulli.*'trace'"):
        elbo.loss_and_grads(_discrete_model, _discrete_guide, torch.tensor([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("spec", ["trace", "graph", "score"])
def test_score_function_estimators_accept_a_discrete_latent(spec):
    x = torch.tensor([0.0, 1.0, 2.0])
    loss = make_elbo(spec, 2).loss_and_grads(_discrete_model, _discrete_guide, x)
    assert math.isfinite(loss)
    assert pyro.param("probs").grad.abs().sum() > 0


def _two_latent_model(x):
    with pyro.plate("data", x.shape[0]):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(a + b, 1.0), obs=x)


def _make_two_latent_guide(hierarchical):
    def guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0]))
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(loc, 1.0))
            pyro.sample("b", dist.Normal(a if hierarchical else loc, 1.0))

    return guide


@pytest.mark.parametrize("spec", ["stl", "dreg:3"])
def test_stl_and_dreg_reject_hierarchical_guides(spec):
    """Their score removal assumes no guide site depends on another latent value."""
    x = torch.tensor([0.5, -1.0])
    flat = make_elbo(spec).loss_and_grads(_two_latent_model, _make_two_latent_guide(False), x)
    assert math.isfinite(flat)
    with pytest.raises(PyrovaeError, match="guide site 'b' depends on another latent"):
        make_elbo(spec).loss_and_grads(_two_latent_model, _make_two_latent_guide(True), x)


# --------------------------------------------------------------------------- score, jit


def test_score_estimator_keeps_the_loss_and_drops_the_path_gradient():
    """Same samples: same loss as ``trace``; the guide gradient differs (no path term) and
    the model gradient is the same (it never used the path)."""
    vae, x = _vae_and_data()
    out = {}
    for spec in ("trace", "score"):
        _zero(vae)
        torch.manual_seed(2)
        loss = make_elbo(spec).loss_and_grads(vae.model, vae.guide, x)
        out[spec] = loss, _grads(vae.encoder), _grads(vae.decoder)
    assert out["score"][0] == pytest.approx(out["trace"][0], rel=1e-6)
    for a, b in zip(out["score"][2], out["trace"][2], strict=True):
        torch.testing.assert_close(a, b)
    diffs = [(a - b).abs().max() for a, b in zip(out["score"][1], out["trace"][1], strict=True)]
    assert max(diffs) > 1e-3


def test_jit_compiles_once_for_bound_methods_and_sees_new_beta_values():
    """Pyro keys compilation on id(model); ``vae.model`` is a new bound method per access."""
    vae, x = _vae_and_data()
    jit, trace = make_elbo("jit"), make_elbo("trace")
    beta = torch.tensor(0.5)
    for _ in range(3):
        jit.loss_and_grads(vae.model, vae.guide, x, beta=beta)
    assert len(jit._loss_and_surrogate_loss.compiled) == 1
    beta.fill_(0.9)  # a schedule updating its tensor in place must not be ignored
    jit.loss_and_grads(vae.model, vae.guide, x, beta=beta)
    torch.manual_seed(3)
    a = jit.loss_and_grads(vae.model, vae.guide, x, beta=beta)
    torch.manual_seed(3)
    b = trace.loss_and_grads(vae.model, vae.guide, x, beta=0.9)
    assert a == pytest.approx(b, rel=1e-5)
