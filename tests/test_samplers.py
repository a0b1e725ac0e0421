"""Samplers: the aggregate posterior is the right mixture, the GMM fits, every name works, errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.samplers import SAMPLER_NAMES, SAMPLERS, sample_codes

# three hand-made diagonal posteriors q(z | x_i) in 2-D
LOC = torch.tensor([[0.0, 0.0], [3.0, -1.0], [-2.0, 4.0]], dtype=torch.float64)
SCALE = torch.tensor([[1.0, 0.5], [0.3, 2.0], [0.8, 0.8]], dtype=torch.float64)


def mixture_moments(loc, scale):
    """Closed-form mean and covariance of the equal-weight mixture of N(loc_i, diag(scale_i^2))."""
    mean = loc.mean(0)
    second = torch.diag_embed(scale**2).mean(0) + (loc.unsqueeze(2) * loc.unsqueeze(1)).mean(0)
    return mean, second - torch.outer(mean, mean)


def assert_moments(z, mean, cov, sigmas=5.0):
    """Sample mean and covariance within ``sigmas`` standard errors (estimated from the draws)."""
    n = len(z)
    centred = z - mean
    mean_se = z.std(0) / n**0.5
    assert ((z.mean(0) - mean).abs() < sigmas * mean_se).all(), (z.mean(0), mean)
    products = centred.unsqueeze(2) * centred.unsqueeze(1)  # (n, d, d), mean = cov
    cov_se = products.std(0) / n**0.5
    assert ((products.mean(0) - cov).abs() < sigmas * cov_se).all(), (products.mean(0), cov)


def test_aggregate_draws_from_the_mixture_of_posteriors():
    z = sample_codes("aggregate", 200_000, LOC, SCALE, seed=0)
    assert z.shape == (200_000, 2) and z.dtype == torch.float64
    mean, cov = mixture_moments(LOC, SCALE)
    assert_moments(z, mean, cov)
    # the check has power: dropping the posterior scales (point codes) changes the covariance
    with pytest.raises(AssertionError):
        assert_moments(sample_codes("aggregate", 200_000, LOC, seed=0), mean, cov)


def test_aggregate_of_point_codes_resamples_the_codes_uniformly():
    z = sample_codes("aggregate", 30_000, LOC, torch.zeros_like(LOC), seed=1)
    matches = (z.unsqueeze(1) == LOC).all(dim=2)  # (n, 3): which code each draw is
    assert (matches.sum(1) == 1).all()
    counts = matches.sum(0).double()
    se = (30_000 * (1 / 3) * (2 / 3)) ** 0.5
    assert ((counts - 10_000).abs() < 5 * se).all(), counts
    assert torch.equal(sample_codes("aggregate", 100, LOC, seed=2),
                       sample_codes("aggregate", 100, LOC, torch.zeros_like(LOC), seed=2))


class ShiftedPrior:
    """A 1-d latent with prior N(3, 0.1) (not N(0, I)) and an identity-mean Gaussian observation."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.full_like(x, 3.0), 0.1).to_event(1))
            pyro.sample("obs", dist.Normal(z, 0.05).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))


def test_prior_samples_come_from_running_the_model():
    """pyrovae.sample runs the model unconditioned: its means are the model's own prior's, N(3, 0.1)."""
    m = ShiftedPrior()
    s = pyrovae.sample(m, 20_000, seed=0, like=torch.zeros(5, 1))
    assert s.shape == (20_000, 1)
    se = 0.1 / 20_000**0.5
    assert abs(s.mean().item() - 3.0) < 5 * se
    assert s.std().item() == pytest.approx(0.1, rel=0.05)  # the mean of obs is z: no 0.05 noise
    assert torch.equal(s, pyrovae.sample(m, 20_000, seed=0, like=torch.zeros(5, 1)))
    # an explicit input batch of n examples works the same, and mean=False draws the observation
    t = pyrovae.sample(m, 20_000, seed=0, inputs=torch.zeros(20_000, 1))
    assert torch.equal(s, t)
    draws = pyrovae.sample(m, 20_000, seed=0, like=torch.zeros(5, 1), mean=False)
    assert draws.std().item() == pytest.approx((0.1**2 + 0.05**2) ** 0.5, rel=0.05)


def test_the_prior_is_not_a_code_sampler():
    assert SAMPLER_NAMES[0] == "prior" and "prior" not in SAMPLERS
    with pytest.raises(PyrovaeError, match=r"pyrovae.sample\(model, n\)"):
        sample_codes("prior", 10, torch.zeros(3, 2))
    with pytest.raises(PyrovaeError, match="pyrovae.sample"):
        sample_codes("prior", 10, z_dim=3)


def test_gmm_recovers_a_mixture_and_shuffles_its_draws():
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([[-4.0, 0.0], [4.0, 2.0]], dtype=torch.float64)
    codes = means[torch.arange(4000) % 2] + 0.5 * torch.randn(4000, 2, generator=gen,
                                                             dtype=torch.float64)
    z = sample_codes("gmm", 20_000, codes, seed=0, gmm_components=2)
    mean, cov = mixture_moments(means, torch.full_like(means, 0.5))
    # fit error (4,000 codes) plus Monte Carlo error (20,000 draws): a loose absolute tolerance
    assert torch.allclose(z.mean(0), mean, atol=0.1)
    assert torch.allclose(torch.cov(z.T), cov, atol=0.3)
    # scikit-learn returns draws grouped by component; ours are shuffled, so halves look alike
    assert torch.allclose(z[:10_000].mean(0), z[10_000:].mean(0), atol=0.2)
    assert abs((z[:, 0] > 0).double().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_shapes_and_seeds(name):
    loc = torch.randn(50, 4)
    scale = torch.rand(50, 4)
    z = sample_codes(name, 16, loc, scale, z_dim=4, seed=3, gmm_components=3)
    assert z.shape == (16, 4) and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert torch.equal(z, sample_codes(name, 16, loc, scale, seed=3, gmm_components=3))
    assert not torch.equal(z, sample_codes(name, 16, loc, scale, seed=4, gmm_components=3))
    torch.manual_seed(7)
    a = sample_codes(name, 16, loc, scale, gmm_components=3)
    torch.manual_seed(7)
    assert torch.equal(a, sample_codes(name, 16, loc, scale, gmm_components=3))


def test_gmm_caps_components_at_the_number_of_codes():
    z = sample_codes("gmm", 8, torch.randn(4, 2), seed=0, gmm_components=10)
    assert z.shape == (8, 2) and torch.isfinite(z).all()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("vamp", 4), {"z_dim": 2}, r"unknown sampler 'vamp': choose one of prior, aggregate, gmm"),
        (("aggregate", 0, torch.zeros(3, 2)), {}, "number of samples must be an integer >= 1"),
        (("gmm", 2.5, torch.zeros(3, 2)), {}, "number of samples must be an integer >= 1"),
        (("aggregate", 4), {"z_dim": 2}, "this run has no training data to build the aggregate"),
        (("gmm", 4), {}, "no training data"),
        (("aggregate", 4, torch.zeros(3, 2), torch.ones(3, 3)), {}, "must match"),
        (("aggregate", 4, torch.zeros(3, 2), -torch.ones(3, 2)), {}, ">= 0"),
        (("aggregate", 4, torch.zeros(3, 2)), {"z_dim": 5}, "does not match"),
        (("aggregate", 4, torch.zeros(0, 2)), {}, "N > 0"),
        (("gmm", 4, torch.zeros(3, 2)), {"gmm_components": 0}, "gmm_components"),
    ],
)
def test_bad_input_is_one_clear_error(args, kwargs, match):
    with pytest.raises(PyrovaeError, match=match):
        sample_codes(*args, **kwargs)
