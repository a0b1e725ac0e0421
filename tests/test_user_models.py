"""User-written Pyro models through the generic core: train, evaluate, reload, sample, and numbers.

Six short models of the kind a user writes (plain Pyro, no ``beta`` argument): a VampPrior, a
two-layer hierarchy, a flow guide, a mixture prior enumerated in the model, a conditional VAE
and a VAE with its own site names. Their ELBO and ``log p(x)`` are checked against references
written here with Pyro alone (``Trace_ELBO``/``TraceEnum_ELBO`` and hand-summed traces), and a
linear-Gaussian hierarchy against its closed-form marginal likelihood.
"""

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule
from pyro.poutine.util import site_is_subsample
from torch import nn

import pyrovae
from pyrovae import Dataset, PyrovaeError
from pyrovae.evaluation.diagnostics import gradient_stats, param_groups

D, L, H, C = 6, 2, 16, 3  # features, latent size, hidden units, clusters / classes / pseudo-inputs
N_TRAIN, N_TEST = 64, 32


def mlp(d_in, d_out):
    return nn.Sequential(nn.Linear(d_in, H), nn.Tanh(), nn.Linear(H, d_out))


def gaussian(net, h):
    loc, raw = net(h).chunk(2, -1)
    return loc, F.softplus(raw) + 1e-3


# --------------------------------------------------------------------------- the six user models


class Vamp(nn.Module):
    """VampPrior: p(z) = mean_k q(z | u_k) at learned pseudo-inputs u (a ``pyro.param``)."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(D, 2 * L), mlp(L, D)
        self.register_buffer("pseudo_init", torch.randn(C, D))

    def prior(self):
        u = pyro.param("pseudo_inputs", lambda: self.pseudo_init.clone())
        loc, scale = gaussian(self.enc, u)  # (C, L) each
        mix = dist.Categorical(logits=torch.zeros(C))
        return dist.MixtureSameFamily(mix, dist.Normal(loc, scale).to_event(1))

    def model(self, x):
        pyro.module("encoder", self.enc)
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*gaussian(self.enc, x)).to_event(1))


class TwoLayer(nn.Module):
    """Hierarchical VAE z2 -> z1 -> x with the guide x -> z1 -> z2."""

    def __init__(self):
        super().__init__()
        self.p_z1, self.p_x = mlp(L, 2 * 3), mlp(3, D)
        self.q_z1, self.q_z2 = mlp(D, 2 * 3), mlp(3, 2 * L)

    def model(self, x):
        pyro.module("p_z1", self.p_z1)
        pyro.module("p_x", self.p_x)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(*gaussian(self.p_z1, z2)).to_event(1))
            pyro.sample("x", dist.Normal(self.p_x(z1), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("q_z1", self.q_z1)
        pyro.module("q_z2", self.q_z2)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(*gaussian(self.q_z1, x)).to_event(1))
            pyro.sample("z2", dist.Normal(*gaussian(self.q_z2, z1)).to_event(1))


class FlowGuide(nn.Module):
    """Gaussian guide followed by an affine autoregressive flow."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(D, 2 * L), mlp(L, D)
        self.flow = T.affine_autoregressive(L, hidden_dims=[8])

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        pyro.module("flow", self.flow)
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(*gaussian(self.enc, x)).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [self.flow]))


class MixturePrior(nn.Module):
    """Gaussian-mixture prior; the cluster ``c`` is enumerated in the model, not in the guide."""

    ENUM = ("c", C)  # for the reference below: the model-side enumerated site and its support

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(D, 2 * L), mlp(L, D)
        self.prior = nn.ParameterDict(
            {"means": nn.Parameter(2 * torch.randn(C, L)), "logits": nn.Parameter(torch.zeros(C))})

    def model(self, x):
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.prior["logits"]),
                            infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.prior["means"][c], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*gaussian(self.enc, x)).to_event(1))


class Conditional(nn.Module):
    """Conditional VAE: the class label (an int) is one-hot coded into encoder and decoder."""

    inputs = ("x", "y")

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(D + C, 2 * L), mlp(L + C, D)

    @staticmethod
    def join(h, y):
        y = F.one_hot(y.long(), C).to(h.dtype)
        return torch.cat([h, y.expand(*h.shape[:-1], C)], -1)  # h may carry particle dims

    def model(self, x, y):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(self.join(z, y)), 0.5).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*gaussian(self.enc, self.join(x, y))).to_event(1))


class OwnNames(PyroModule):
    """A plain VAE (a PyroModule) with its own plate and site names, fixed Gaussian noise."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = PyroModule[nn.Linear](D, H), PyroModule[nn.Linear](H, 2 * L)
        self.dec1, self.dec2 = PyroModule[nn.Linear](L, H), PyroModule[nn.Linear](H, D)

    def model(self, x):
        with pyro.plate("batch", x.shape[0]):
            code = pyro.sample("code", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            mean = self.dec2(torch.tanh(self.dec1(code)))
            pyro.sample("pixels", dist.Normal(mean, 0.3).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("batch", x.shape[0]):
            loc, raw = self.enc2(torch.tanh(self.enc1(x))).chunk(2, -1)
            pyro.sample("code", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))


MODELS = [Vamp, TwoLayer, FlowGuide, MixturePrior, Conditional, OwnNames]
IDS = [m.__name__ for m in MODELS]


def estimator_for(cls):
    return "enum" if hasattr(cls, "ENUM") else "trace"


# --------------------------------------------------------------------------- data


def toy_data(seed=0) -> Dataset:
    """64 + 32 examples of 6 continuous features from a 2-d latent; 3 labels from the latent."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(L, D, generator=g)
    z = torch.randn(N_TRAIN + N_TEST, L, generator=g)
    x = torch.tanh(z @ w) + 0.1 * torch.randn(N_TRAIN + N_TEST, D, generator=g)
    y = (z[:, 0] > 0).long() + (z[:, 1] > 0.5).long()  # 0, 1 or 2
    return Dataset("user-toy", x[:N_TRAIN], x[N_TRAIN:], y[:N_TRAIN], y[N_TRAIN:])


def batch_of(obj, x, y):
    return (x, y) if getattr(obj, "inputs", ("x",)) == ("x", "y") else (x,)


def tiled(batch, times):
    return tuple(t.repeat_interleave(times, dim=0) for t in batch)


# --------------------------------------------------------------------------- references (Pyro only)


def _per_example(site, n):
    lp = site["fn"].log_prob(site["value"])
    assert lp.shape == (n,), (site["name"], lp.shape)
    return lp


def _sample_sites(trace):
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


@torch.no_grad()
def reference_log_weights(obj, batch, k):
    """``(k, N)`` log weights ``log p(x, z) - log q(z | x)``, ``z ~ q``, each site summed by hand.

    The guide is traced, the model replayed on its latents; every model sample site's
    ``log_prob`` is added up per example. A model-side enumerated site (``obj.ENUM``) is summed
    out exactly by conditioning the model on each of its values in turn.
    """
    n = batch[0].shape[0]
    enum = getattr(obj, "ENUM", None)
    out = []
    for _ in range(k):
        guide_tr = poutine.trace(obj.guide).get_trace(*batch)
        log_q = sum(_per_example(s, n) for s in _sample_sites(guide_tr) if not s["is_observed"])
        models = [obj.model] if enum is None else [
            poutine.condition(obj.model, data={enum[0]: torch.full((n,), j, dtype=torch.long)})
            for j in range(enum[1])]
        log_p = []
        for model in models:
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*batch)
            log_p.append(sum(_per_example(s, n) for s in _sample_sites(model_tr)))
        out.append(torch.logsumexp(torch.stack(log_p), 0) - log_q)
    return torch.stack(out)


def reference_log_px(obj, batch, k):
    lw = reference_log_weights(obj, batch, k)
    return torch.logsumexp(lw, 0) - math.log(k)


@torch.no_grad()
def reference_elbo(obj, batch, particles):
    """Pyro's own ELBO per example, with many vectorized particles."""
    cls = pyro.infer.TraceEnum_ELBO if hasattr(obj, "ENUM") else pyro.infer.Trace_ELBO
    elbo = cls(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    return -elbo.loss(obj.model, obj.guide, *batch) / batch[0].shape[0]


def fresh(cls, seed=0):
    pyro.set_rng_seed(seed)
    return cls()


# --------------------------------------------------------------------------- train, evaluate, reload


@pytest.mark.parametrize("cls", MODELS, ids=IDS)
def test_user_model_trains_evaluates_reloads_and_samples(cls, tmp_path, single_thread):
    ds = toy_data()
    obj = fresh(cls)
    run = pyrovae.train(model=obj, data=ds, epochs=2, batch_size=32, lr=1e-3,
                        estimator=estimator_for(cls), binarize="none", run_dir=tmp_path / "run",
                        progress=False, figures=False)
    assert run.model is obj
    assert len(run.metrics) == 2
    last = run.metrics[-1]
    for key in ("test_elbo", "test_recon", "test_kl", "train_loss"):
        if key in ("test_recon", "test_kl") and hasattr(cls, "ENUM") and last[key] is None:
            continue  # recon/kl may be undefined with a model-side enumerated site
        assert math.isfinite(last[key]), (key, last)
    assert "active_units" in last

    test = batch_of(obj, ds.test_x, ds.test_y)
    summary = pyrovae.evaluate(obj, test if len(test) > 1 else test[0], iwae_k=5, seed=0)
    assert summary["n"] == N_TEST and summary["iwae_k"] == 5
    assert math.isfinite(summary["elbo"]) and math.isfinite(summary["log_px"])

    pyro.set_rng_seed(3)
    ll = pyrovae.log_likelihood(obj, test, 10)
    assert ll.shape == (N_TEST,) and torch.isfinite(ll).all()

    # parameter round trip into a fresh instance (its own random init), the store emptied first,
    # as in a new process: nn.Module, PyroModule and pyro.param parameters must all come back
    pyro.clear_param_store()
    back = pyrovae.load_run(tmp_path / "run", model=fresh(cls, seed=99), data=ds)
    assert back.model is not obj
    pyro.set_rng_seed(3)
    ll_back = pyrovae.log_likelihood(back.model, test, 10)
    torch.testing.assert_close(ll_back, ll, rtol=1e-5, atol=1e-5)

    images = pyrovae.sample(back.model, 8, seed=0)
    assert images.shape == (8, D) and torch.isfinite(images).all()
    torch.testing.assert_close(pyrovae.sample(back.model, 8, seed=0), images)
    if len(test) > 1:  # a conditional model with explicit labels
        labelled = pyrovae.sample(back.model, 6, seed=0,
                                  inputs=(torch.zeros(6, D), torch.arange(6) % C))
        assert labelled.shape == (6, D) and torch.isfinite(labelled).all()


@pytest.mark.parametrize("cls", MODELS, ids=IDS)
def test_user_model_gradient_diagnostics(cls, single_thread):
    ds = toy_data()
    obj = fresh(cls)
    batch = batch_of(obj, ds.train_x[:16], ds.train_y[:16])
    groups = param_groups(obj, batch)
    assert groups["guide"] and groups["model"], {k: len(v) for k, v in groups.items()}
    if cls is Vamp:  # the pseudo-inputs are a model parameter
        assert any(p.shape == (C, D) for p in groups["model"])
    elbo = pyrovae.make_elbo(estimator_for(cls), max_plate_nesting=1)
    stats = gradient_stats(elbo, obj.model, obj.guide, batch, None, groups, 3, 0)
    for name in ("guide", "model"):
        assert stats[name]["coordinates"] > 0
        assert math.isfinite(stats[name]["mean_norm"]) and stats[name]["mean_norm"] > 0
        assert math.isfinite(stats[name]["variance"])


def test_vamp_pseudo_inputs_train(tmp_path, single_thread):
    """A ``pyro.param`` created inside the model is optimized like the modules' parameters."""
    obj = fresh(Vamp)
    pyrovae.train(model=obj, data=toy_data(), epochs=2, batch_size=32, lr=1e-2, estimator="trace",
                  binarize="none", run_dir=tmp_path / "run", progress=False, figures=False)
    after = pyro.param("pseudo_inputs").detach()
    assert after.shape == (C, D)
    assert (after - obj.pseudo_init).abs().max() > 1e-3


# --------------------------------------------------------------------------- numbers vs references


@pytest.mark.parametrize("cls", MODELS, ids=IDS)
def test_elbo_matches_pyros_own_elbo(cls, single_thread):
    """pyrovae's per-example ELBO (one draw per example) vs Pyro's with 2000 particles.

    The 32 held-out examples are each repeated 16 times, so pyrovae's mean is over 512 draws;
    the tolerance is 4 standard errors from the per-example spread of single-draw ELBOs.
    """
    ds = toy_data()
    obj = fresh(cls)
    batch = batch_of(obj, ds.test_x, ds.test_y)
    reps, particles = 16, 2000
    pyro.set_rng_seed(1)
    ref = reference_elbo(obj, batch, particles)
    var = reference_log_weights(obj, batch, 40).var(0).mean().item()
    se = math.sqrt(var / (reps * N_TEST) + var / (particles * N_TEST))
    pyro.set_rng_seed(2)
    got = pyrovae.elbo_terms(obj, tiled(batch, reps))["elbo"]
    assert abs(got - ref) < 4 * se + 1e-4, (got, ref, se)


@pytest.mark.parametrize("cls", MODELS, ids=IDS)
def test_log_likelihood_matches_brute_force_reference(cls, single_thread):
    """pyrovae.log_likelihood at K=20 vs the hand-summed traces at K=20, paired per example."""
    ds = toy_data()
    obj = fresh(cls)
    batch = tiled(batch_of(obj, ds.test_x, ds.test_y), 8)  # 256 rows
    k = 20
    pyro.set_rng_seed(1)
    ref = reference_log_px(obj, batch, k)
    pyro.set_rng_seed(2)
    got = pyrovae.log_likelihood(obj, batch, k)
    assert got.shape == ref.shape == (len(batch[0]),)
    d = got - ref
    se = d.std().item() / math.sqrt(len(d))
    assert abs(d.mean().item()) < 4 * se + 1e-4, (d.mean().item(), se)
    # and as a lower bound that tightens: the mean at K=20 exceeds the ELBO (K=1) clearly
    pyro.set_rng_seed(3)
    elbo = pyrovae.log_likelihood(obj, batch, 1)
    assert got.mean() > elbo.mean()


# --------------------------------------------------------------------------- closed form


class LinearTwoLayer(nn.Module):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2, s1^2 I), x | z1 ~ N(B z1, s2^2 I); a fixed guide.

    The guide is q(z1 | x) q(z2 | z1): the exact posterior means with diagonal scales 1.2 times
    the exact marginal posterior standard deviations, so it is close but not exact.
    """

    S1, S2, Z1, Z2 = 0.7, 0.5, 3, 2

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        a = torch.randn(self.Z1, self.Z2, generator=g, dtype=torch.float64)
        b = torch.randn(D, self.Z1, generator=g, dtype=torch.float64)
        eye1 = torch.eye(self.Z1, dtype=torch.float64)
        eye2 = torch.eye(self.Z2, dtype=torch.float64)
        cov_z1 = a @ a.T + self.S1**2 * eye1
        post1 = torch.linalg.inv(torch.linalg.inv(cov_z1) + b.T @ b / self.S2**2)
        post2 = torch.linalg.inv(eye2 + a.T @ a / self.S1**2)  # p(z2 | z1) (= p(z2 | z1, x))
        self.register_buffer("A", a.float())
        self.register_buffer("B", b.float())
        self.register_buffer("m1", (post1 @ b.T / self.S2**2).float())  # E[z1|x] = m1 x
        self.register_buffer("sd1", 1.2 * post1.diagonal().sqrt().float())
        self.register_buffer("m2", (post2 @ a.T / self.S1**2).float())  # E[z2|z1] = m2 z1
        self.register_buffer("sd2", 1.2 * post2.diagonal().sqrt().float())
        self.marginal_cov = b @ cov_z1 @ b.T + self.S2**2 * torch.eye(D, dtype=torch.float64)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0).expand([self.Z2]).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ self.A.T, self.S1).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.B.T, self.S2).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x @ self.m1.T, self.sd1).to_event(1))
            pyro.sample("z2", dist.Normal(z1 @ self.m2.T, self.sd2).to_event(1))

    def exact_log_px(self, x):
        zero = torch.zeros(D, dtype=torch.float64)
        return dist.MultivariateNormal(zero, self.marginal_cov).log_prob(x.double())

    def draw(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(self.marginal_cov)
        return (torch.randn(n, D, generator=g, dtype=torch.float64) @ chol.T).float()


def test_reference_log_px_matches_the_closed_form(single_thread):
    """Checks the brute-force reference itself (no pyrovae): K=300 is within 0.05 nats."""
    obj = LinearTwoLayer()
    x = obj.draw(32, seed=1)
    exact = obj.exact_log_px(x)
    ref = reference_log_px(obj, (x,), 300).double()
    assert (ref - exact).mean().abs() < 0.05
    elbo = reference_log_weights(obj, (x,), 20).double().mean(0)
    assert elbo.mean() < exact.mean() - 0.1


def test_log_likelihood_approaches_closed_form_marginal(single_thread):
    """Two-layer linear-Gaussian model: log p(x) is the Gaussian marginal N(0, B(AA'+s1^2)B'+s2^2).

    With K=2000 the estimate is within 0.03 nats per example on average (the importance
    estimate is a lower bound in expectation, the gap here about 0.005); with K=1 (the ELBO)
    it is clearly below (the guide's diagonal scales cost about 1.5 nats).
    """
    obj = LinearTwoLayer()
    x = obj.draw(64, seed=0)
    exact = obj.exact_log_px(x)
    pyro.set_rng_seed(1)
    big = pyrovae.log_likelihood(obj, x, 2000).double()
    assert big.shape == (64,)
    gap = exact - big
    assert gap.mean().abs() < 0.03, gap.mean()
    assert gap.abs().max() < 0.3
    pyro.set_rng_seed(2)
    one = pyrovae.log_likelihood(obj, x.repeat(8, 1), 1).double()  # 512 draws: ELBO gap ~1.5
    assert one.mean() < exact.mean() - 0.5
    assert one.mean() < big.mean() - 0.5


# --------------------------------------------------------------------------- contract violations


class _Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(D, 2 * L), mlp(L, D)


class GlobalLatent(_Base):
    """A latent ``global_w`` outside the batch plate (a Bayesian offset shared by all examples)."""

    def model(self, x):
        pyro.module("decoder", self.dec)
        w = pyro.sample("global_w", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z + w), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        loc = pyro.param("w_loc", torch.zeros(L))
        pyro.sample("global_w", dist.Normal(loc, 0.1).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*gaussian(self.enc, x)).to_event(1))


class NoObservation(_Base):
    """Forgot to observe the data: the model has no ``obs=`` site at all."""

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            return self.dec(z)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*gaussian(self.enc, x)).to_event(1))


class DiscreteGuide(_Base):
    """A Bernoulli ``switch`` latent sampled in the guide (no rsample)."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Linear(D, 1)

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("switch", dist.Bernoulli(0.5 * torch.ones(())))
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z) + s[..., None], 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        pyro.module("logit", self.logit)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("switch", dist.Bernoulli(logits=self.logit(x).squeeze(-1)))
            pyro.sample("z", dist.Normal(*gaussian(self.enc, x)).to_event(1))


class LateParam(_Base):
    """The guide creates ``late_scale`` only from its fifth call on (well after the first step)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        self.calls += 1
        pyro.module("encoder", self.enc)
        loc, scale = gaussian(self.enc, x)
        if self.calls > 4:
            scale = scale * pyro.param("late_scale", torch.ones(L),
                                       constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _train(obj, tmp_path, estimator="trace", epochs=1, batch_size=32):
    return pyrovae.train(model=obj, data=toy_data(), epochs=epochs, batch_size=batch_size,
                         lr=1e-3, estimator=estimator, binarize="none", run_dir=tmp_path / "run",
                         progress=False, figures=False)


def test_latent_outside_the_batch_plate_is_refused(tmp_path, single_thread):
    with pytest.raises(PyrovaeError, match="global_w"):
        _train(GlobalLatent(), tmp_path)


def test_model_without_an_observed_site_is_refused(tmp_path, single_thread):
    with pytest.raises(PyrovaeError, match=r"(?i)obs"):
        _train(NoObservation(), tmp_path)


@pytest.mark.parametrize("estimator", ["stl", "iwae:3"])
def test_discrete_guide_site_is_refused_by_reparameterized_estimators(
    estimator, tmp_path, single_thread
):
    with pytest.raises(PyrovaeError, match="switch"):
        _train(DiscreteGuide(), tmp_path, estimator=estimator)


def test_parameter_created_after_the_first_step_is_refused(tmp_path, single_thread):
    with pytest.raises(PyrovaeError, match="late_scale"):
        _train(LateParam(), tmp_path, epochs=2, batch_size=8)
