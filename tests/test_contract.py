"""The model contract at its edges: which plate is the batch's, enumerated models under beta, codes
of discrete sites, and parameters that belong to one object when another shares their names."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyrovae
from pyrovae import Dataset, PyrovaeError

D, L, H, C = 4, 2, 16, 3


def mlp(i, o):
    return nn.Sequential(nn.Linear(i, H), nn.Tanh(), nn.Linear(H, o))


def toy(n_train=32, n_test=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n_train + n_test, D, generator=g) > 0.5).float()
    return Dataset("toy", x[:n_train], x[n_train:])


def fit(model, tmp_path=None, **kw):
    kw = {"epochs": 1, "batch_size": 4, **kw}
    return pyrovae.train(model=model, data=toy(), progress=False, figures=False,
                         run_dir=None if tmp_path is None else tmp_path / "run", **kw)


class FeaturePlate(nn.Module):
    """The batch plate at dim -2 and a per-feature plate of D (= the inspected batch of 4) at -1."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(D, 2 * L), mlp(L, D)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))  # (..., N, 1, L)
            logits = self.dec(z).squeeze(-2)  # (..., N, D), one logit per feature
            with pyro.plate("features", D, dim=-1):
                pyro.sample("x", dist.Bernoulli(logits=logits), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        loc, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0], dim=-2):
            scale = F.softplus(s) + 1e-3
            pyro.sample("z", dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1))


def test_a_feature_plate_of_the_batch_size_is_not_taken_for_the_batch(single_thread):
    model = FeaturePlate()
    run = fit(model, batch_size=4)
    assert run.program.batch_plate == "data" and run.program.batch_dim == -2
    x = run.data.test_x
    assert pyrovae.log_likelihood(model, x[:1], 5).shape == (1,)
    assert pyrovae.log_likelihood(model, x[:D], 5).shape == (D,)
    assert pyrovae.encode(model, x)[0].shape == (len(x), L)


class Mixture(nn.Module):
    """z ~ N(0, I), c ~ Cat uniform enumerated in the model; ``z_depends`` puts z | c ~ N(mu_c, 1)."""

    def __init__(self, z_depends: bool):
        super().__init__()
        self.z_depends = z_depends
        self.enc, self.dec = mlp(D, 2 * L), mlp(L, D)
        self.bias = nn.Parameter(0.1 * torch.randn(C, D))
        self.mu = nn.Parameter(torch.randn(C, L))

    def model(self, x):
        pyro.module("mix", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(C)),
                            infer={"enumerate": "parallel"})
            loc = self.mu[c] if self.z_depends else x.new_zeros(L)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z) + self.bias[c]).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("mix", self)
        loc, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))


@pytest.mark.parametrize("options", [dict(), dict(beta=0.5), dict(kl_schedule="linear")])
def test_beta_weights_the_guides_sites_of_an_enumerated_model(options, single_thread):
    """The cluster is summed out exactly; beta weights z only, so schedules work on it."""
    run = fit(Mixture(z_depends=False), estimator="enum", epochs=2, **options)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in run.metrics)
    assert run.metrics[-1]["test_elbo"] is not None and run.metrics[-1]["test_recon"] is None


def test_beta_on_latents_that_depend_on_an_enumerated_site_is_refused_up_front(tmp_path, single_thread):
    run = fit(Mixture(z_depends=True), estimator="enum")  # beta 1: trains
    assert run.program.model_only == ("c",)
    with pytest.raises(PyrovaeError, match=r"beta cannot weight this model.*\['c'\].*beta=1"):
        fit(Mixture(z_depends=True), tmp_path, estimator="enum", kl_schedule="linear")
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


class DiscreteCode(nn.Module):
    """A categorical code c (sampled in the guide) next to a Gaussian z."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.cls = mlp(D, 2 * L), mlp(L + C, D), mlp(D, C)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(C)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            h = torch.cat([z, F.one_hot(c, C).to(z.dtype).expand(*z.shape[:-1], C)], -1)
            pyro.sample("x", dist.Bernoulli(logits=self.dec(h)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        pyro.module("cls", self.cls)
        loc, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=self.cls(x)))
            pyro.sample("z", dist.Normal(loc, F.softplus(s) + 1e-3).to_event(1))


def test_codes_of_a_discrete_site_are_finite(single_thread):
    model = DiscreteCode()
    x = toy().test_x
    loc, scale = pyrovae.encode(model, x, site="c")
    assert loc.shape == (len(x), 1) and torch.isfinite(loc).all() and torch.isfinite(scale).all()
    assert ((loc >= 0) & (loc <= C - 1)).all()  # the mean of values in {0, 1, 2}
    assert set(pyrovae.evaluate(model, x)["active_units_per_site"]) == {"c", "z"}


class Vamp(nn.Module):
    """A VampPrior with ``k`` pseudo-inputs, all named "u" whatever k."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.enc, self.dec = mlp(D, 2 * L), mlp(L, D)

    def q(self, x):
        loc, s = self.enc(x).chunk(2, -1)
        return dist.Normal(loc, F.softplus(s) + 1e-3)

    def model(self, x):
        pyro.module("enc", self.enc)
        pyro.module("dec", self.dec)
        u = pyro.param("u", lambda: torch.rand(self.k, D, generator=torch.Generator().manual_seed(self.k)))
        prior = dist.MixtureSameFamily(dist.Categorical(logits=u.new_zeros(self.k)),
                                       dist.Independent(self.q(u), 1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x).to_event(1))


def test_each_object_keeps_its_own_pyro_params(tmp_path, single_thread):
    """Two VampPriors share the name "u" with different shapes: evaluating, reloading and sampling
    each uses its own values, whatever the global param store holds last."""
    small, large = Vamp(3), Vamp(5)
    fit(small, tmp_path, epochs=2, lr=0.05)
    trained_u = pyro.param("u").detach().clone()
    fit(large, epochs=1)
    assert pyro.param("u").shape == (5, D)  # the global store: the last one trained
    x = toy().test_x
    pyro.set_rng_seed(0)
    first = pyrovae.log_likelihood(small, x, 10)  # its own (3, D) values, not the store's
    fresh = Vamp(3)
    reloaded = pyrovae.load_run(tmp_path / "run", model=fresh, data=toy())
    assert torch.equal(pyro.param("u").detach(), trained_u)
    pyro.set_rng_seed(0)
    again = pyrovae.log_likelihood(reloaded.model, x, 10)
    torch.testing.assert_close(first, again)
    assert pyrovae.sample(large, 4, seed=0).shape == (4, D)
