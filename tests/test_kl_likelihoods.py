"""Closed forms against torch and Monte Carlo; likelihoods against the losses they generalize."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from pyrovae.errors import PyrovaeError
from pyrovae.nn.likelihoods import LIKELIHOODS, build_likelihood


def gaussian_kl(loc, scale):
    """KL(N(loc, scale^2) || N(0, 1)) summed over the last dim, the textbook closed form."""
    return 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum(-1)


def test_closed_form_kl_matches_torch_and_monte_carlo():
    torch.manual_seed(0)
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.3
    q, p = Independent(Normal(loc, scale), 1), Independent(Normal(0.0, torch.ones(3)), 1)
    exact = gaussian_kl(loc, scale)
    assert torch.allclose(kl_divergence(q, p), exact, atol=1e-6)
    z = q.rsample((200_000,))
    draws = q.log_prob(z) - p.log_prob(z)
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() < 5 * stderr).all()


def test_bernoulli_is_binary_cross_entropy():
    out, x = torch.randn(3, 1, 4, 4), torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    lp = build_likelihood("bernoulli").distribution(out).to_event(3).log_prob(x)
    bce = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum((1, 2, 3))
    assert torch.allclose(lp, -bce, atol=1e-5)


@pytest.mark.parametrize("name,loss", [("gaussian", "mse"), ("laplace", "mae")])
def test_fixed_scale_likelihoods_are_scaled_errors(name, loss):
    out, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    s, d = 0.2, 16
    lp = build_likelihood(name, s).distribution(out).to_event(3).log_prob(x)
    err = x - torch.sigmoid(out)
    if loss == "mse":
        expected = -(err**2).sum((1, 2, 3)) / (2 * s**2) - d * math.log(s * math.sqrt(2 * math.pi))
    else:
        expected = -err.abs().sum((1, 2, 3)) / s - d * math.log(2 * s)
    assert torch.allclose(lp, expected, atol=1e-4)


def test_learned_scale_is_a_parameter_and_fixed_is_not():
    assert len(list(build_likelihood("gaussian").parameters())) == 1
    assert len(list(build_likelihood("gaussian", 0.1).parameters())) == 0
    assert float(build_likelihood("laplace").scale.detach()) == pytest.approx(0.1)


def test_continuous_bernoulli_mean_in_unit_interval():
    lik = build_likelihood("continuous-bernoulli")
    m = lik.mean(torch.tensor([-30.0, -1.0, 0.0, 1.0, 30.0]))
    assert ((m > 0) & (m < 1)).all() and m[2] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_out_of_range_and_nan_data_are_clear_errors(name):
    lik = build_likelihood(name, 0.1 if name in ("gaussian", "laplace") else None)
    with pytest.raises(PyrovaeError, match=r"\[0, 1\]"):
        lik.check(torch.tensor([0.0, 1.5]))
    with pytest.raises(PyrovaeError, match="NaN"):
        lik.check(torch.tensor([0.0, float("nan")]))


def test_bernoulli_rejects_grey_levels_and_names_the_fix():
    with pytest.raises(PyrovaeError, match="--binarize"):
        build_likelihood("bernoulli").check(torch.tensor([0.0, 0.5, 1.0]))
    build_likelihood("continuous-bernoulli").check(torch.tensor([0.0, 0.5, 1.0]))


def test_unknown_likelihood_and_bad_scale():
    with pytest.raises(PyrovaeError, match="unknown --likelihood 'poisson'"):
        build_likelihood("poisson")
    with pytest.raises(PyrovaeError, match="--obs-scale must be a positive"):
        build_likelihood("gaussian", -1.0)
