"""The absolute value of the importance-sampled ``log p(x)``, against closed forms (float64, seeded).

With the guide equal to the exact posterior every importance weight is ``p(x)``, so the estimate is
``log p(x)`` for every ``K`` and every chunking (a missing or doubled ``- log K`` is off by
``log K``). With a guide wider than the posterior the estimate is ``log p(x)`` minus a bias of
``chi2 / (2 K)`` to first order (``chi2 = E_q[(p(z|x) / q(z|x))^2] - 1``, closed-form for Gaussians),
with a spread of ``sqrt(chi2 / K)`` per example: both are checked within 5 standard errors.
Then the refusals of requests ``log p(x)`` cannot serve: a bad ``iwae_k``, a huge one, too little memory.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae import checks
from pyrovae.evaluation import metrics
from pyrovae.models.linear_gaussian import closed_form_elbo, exact_guide, log_marginal, make_problem

pytestmark = pytest.mark.usefixtures("single_thread")

PER_DRAW = 2 + 3 + 2  # site elements per example and draw: latent (model, guide) and obs, make_problem()
WIDEN = 1.25  # the wide guide's scale over the posterior's


class Pair:
    """A linear-Gaussian model and a guide (two modules) as the one object pyrovae takes; counts
    the model's runs."""

    def __init__(self, lg_model, lg_guide):
        self.lg_model, self.lg_guide, self.runs = lg_model, lg_guide, 0

    def model(self, x):
        self.runs += 1
        self.lg_model.model(x)

    def guide(self, x):
        self.lg_guide.guide(x)


def _problem(num_data=6, widen=1.0):
    """``(pair, x, chi2)``: the exact posterior's guide with its scales times ``widen``."""
    model, _, x = make_problem(num_data=num_data)
    guide = exact_guide(model, diagonal=True)
    with torch.no_grad():
        guide.log_diag += math.log(widen)
    # per dim: E_q[(p/q)^2] = r / sqrt(2 - 1/r^2) for N(m, s^2) against N(m, (r s)^2), r = widen
    chi2 = (widen / math.sqrt(2 - widen**-2)) ** model.latent_dim - 1
    return Pair(model, guide), x, chi2


def _exact(pair, x):
    return log_marginal(pair.lg_model, x).detach()


# --------------------------------------------------------------------------- exact posterior


@pytest.mark.parametrize("max_elements", [metrics.MAX_ELEMENTS, PER_DRAW * 2, PER_DRAW * 64 * 2],
                         ids=["one-chunk", "chunks-of-2-draws", "chunks-of-2-examples"])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_exact_posterior_gives_log_marginal_for_every_k(k, max_elements):
    pair, x, _ = _problem()
    got = pyrovae.log_likelihood(pair, x, k, max_elements=max_elements)
    assert got.dtype == torch.float64 and got.shape == (6,)
    torch.testing.assert_close(got, _exact(pair, x), rtol=0, atol=1e-9)


class Chain:
    """z1 ~ N(0, 1), z2 | z1 ~ N(z1, 1), x | z2 ~ N(z2, s^2): ``p(x) = N(0, 2 + s^2)``; the guide
    is the exact posterior, ``p(z1 | x)`` then ``p(z2 | z1, x)``: two latent sites in model and guide."""

    s = 0.5

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x), 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("obs", dist.Normal(z2, self.s), obs=x)

    def guide(self, x):
        v = 2 + self.s**2
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x / v, math.sqrt(1 - 1 / v)))
            precision = 1 + self.s**-2
            pyro.sample("z2", dist.Normal((z1 + x / self.s**2) / precision, precision**-0.5))


class Mixture:
    """c ~ Categorical(pi), x | c ~ N(mu_c, 0.7^2), c enumerated (the guide samples nothing):
    ``log p(x) = logsumexp_c [log pi_c + log N(x; mu_c, 0.7^2)]``."""

    pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mu = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(self.pi))
            pyro.sample("obs", dist.Normal(self.mu[c], 0.7), obs=x)

    def guide(self, x):
        pass


X1 = torch.tensor([-1.5, 0.2, 2.0, 0.9, -3.0], dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 5, 100])
def test_two_latent_sites_with_the_exact_posterior(k):
    got = pyrovae.log_likelihood(Chain(), X1, k)
    exact = dist.Normal(0.0, torch.tensor(2 + Chain.s**2, dtype=torch.float64).sqrt()).log_prob(X1)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("k", [1, 5, 100])
def test_enumerated_discrete_latent(k):
    got = pyrovae.log_likelihood(Mixture(), X1, k, max_elements=30)
    m = Mixture()
    exact = torch.logsumexp(m.pi.log() + dist.Normal(m.mu, 0.7).log_prob(X1.unsqueeze(-1)), -1)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- a wide guide, within MC error


@pytest.mark.parametrize("max_elements", [metrics.MAX_ELEMENTS, PER_DRAW * 100 * 7],
                         ids=["one-chunk", "chunks-of-7-examples"])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_wide_guide_is_log_marginal_minus_its_bias(k, max_elements):
    """K = 1: the closed-form ELBO; larger K: ``log p(x) - chi2 / (2K)``; 400 copies of 6 points."""
    pair, x, chi2 = _problem(widen=WIDEN)
    reps = 400
    pyro.set_rng_seed(0)
    gap = pyrovae.log_likelihood(pair, x.repeat(reps, 1), k, max_elements=max_elements) \
        - _exact(pair, x).repeat(reps)
    se = gap.std().item() / math.sqrt(len(gap))
    if k == 1:
        expected = (closed_form_elbo(pair.lg_model, pair.lg_guide, x) - _exact(pair, x)).mean().item()
    else:
        expected = -chi2 / (2 * k)
    assert abs(gap.mean().item() - expected) < 5 * se, (gap.mean().item(), expected, se)
    assert se < 0.02  # resolves log K (2.3 at K = 10) and the chunks' weights many times over


def test_chunks_of_draws_within_mc_error_per_example():
    """K = 20,000 in four chunks of 5,000 draws: every example within 5 spreads sqrt(chi2 / K) of
    log p(x) (the bias chi2 / (2K) is below 1e-5)."""
    pair, x, chi2 = _problem(widen=WIDEN)
    k = 20_000
    pyro.set_rng_seed(0)
    got = pyrovae.log_likelihood(pair, x, k, max_elements=PER_DRAW * 5000)
    spread = math.sqrt(chi2 / k)
    assert ((got - _exact(pair, x)).abs() < 5 * spread).all(), (got - _exact(pair, x), spread)


@pytest.mark.parametrize("k", [1, 5])
def test_evaluate_log_px_is_the_log_marginal(k):
    pair, x, _ = _problem()
    result = pyrovae.evaluate(pair, x, iwae_k=k)
    assert result["iwae_k"] == k
    assert result["log_px"] == pytest.approx(_exact(pair, x).mean().item(), abs=1e-9)
    assert result["log_px_se"] == pytest.approx(_exact(pair, x).std().item() / math.sqrt(6), rel=1e-6)


def test_evaluate_log_px_with_a_wide_guide():
    pair, x, chi2 = _problem(widen=WIDEN)
    xr = x.repeat(400, 1)
    result = pyrovae.evaluate(pair, xr, iwae_k=50)
    exact = _exact(pair, x).mean().item()
    assert result["elbo"] < exact - 0.01  # the ELBO of a wide guide is loose...
    se = math.sqrt(chi2 / 50 / len(xr))  # ...log p(x) with 50 draws is not
    assert abs(result["log_px"] - (exact - chi2 / 100)) < 5 * se


# --------------------------------------------------------------------------- requests it cannot serve


def test_iwae_k_none_skips_log_px():
    pair, x, _ = _problem()
    result = pyrovae.evaluate(pair, x, iwae_k=None)
    assert "log_px" not in result and "iwae_k" not in result and result["elbo"] is not None


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, 10**9])
def test_bad_iwae_k_is_refused_before_any_work(bad):
    pair, x, _ = _problem()
    with pytest.raises(pyrovae.PyrovaeError, match=r"\biwae_k\b"):
        pyrovae.evaluate(pair, x, iwae_k=bad)
    assert pair.runs == 0


def test_huge_k_is_refused_with_the_bound_and_the_flag():
    pair, x, _ = _problem(num_data=2)
    message = r"k=1,000,000,000 .*\(2,000,000,000 passes .* for 2 examples\) .* pass k <= 10,000,000"
    with pytest.raises(pyrovae.PyrovaeError, match=message):
        pyrovae.log_likelihood(pair, x, 10**9)
    with checks.command_line(), pytest.raises(pyrovae.PyrovaeError, match=r"--iwae-k=1,000,000,000"):
        pyrovae.evaluate(pair, x, iwae_k=10**9)
    assert pair.runs == 0


def test_one_draw_larger_than_max_elements_is_refused():
    pair, x, _ = _problem()
    with pytest.raises(pyrovae.PyrovaeError, match=r"holds 7 site elements, more than max_elements=5"):
        pyrovae.log_likelihood(pair, x, 3, max_elements=5)


def test_no_memory_for_one_draw_is_refused_in_gib(monkeypatch):
    monkeypatch.setattr(metrics, "_free_bytes", lambda device: 100)
    pair, x, _ = _problem()
    with pytest.raises(pyrovae.PyrovaeError, match=r"needs about .* GiB for one importance sample .* free"):
        pyrovae.evaluate(pair, x, iwae_k=10)
    assert pair.runs == 1  # one trace of two examples, to size the sites


def test_little_memory_shrinks_the_chunks_and_keeps_the_value(monkeypatch):
    """Room for a few draws: fewer draws per pass, with a warning, and the same exact value."""
    one_draw = PER_DRAW * 8 * metrics._BYTES_PER_ELEMENT  # float64 elements
    monkeypatch.setattr(metrics, "_free_bytes", lambda device: 10 * one_draw)
    pair, x, _ = _problem()
    with pytest.warns(UserWarning, match=r"k=64 would need about .* computing 5 draws at a time"):
        got = pyrovae.log_likelihood(pair, x, 64)
    torch.testing.assert_close(got, _exact(pair, x), rtol=0, atol=1e-9)
