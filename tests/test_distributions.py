"""DiagNormalMixture (the VampPrior's density) against torch's MixtureSameFamily in float64."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import PyrovaeError
from pyrovae.distributions import DiagNormalMixture


def reference(locs, scales, logits):
    return dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                  dist.Normal(locs.double(), scales.double()).to_event(1))


def params(k=6, d=5, seed=0, narrow=False):
    g = torch.Generator().manual_seed(seed)
    locs = 3 * torch.randn(k, d, generator=g)
    scales = (0.005 if narrow else 0.2) + torch.rand(k, d, generator=g)
    logits = torch.randn(k, generator=g)
    return locs, scales, logits


@pytest.mark.parametrize("narrow", [False, True])
def test_log_prob_equals_mixture_same_family(narrow):
    locs, scales, logits = params(narrow=narrow)
    # values near the components (where expanding the square cancels most) and far from them
    z = torch.cat([locs + 0.1 * scales * torch.randn(6, 5), 5 * torch.randn(4, 5)]).reshape(2, 5, 5)
    exact = reference(locs, scales, logits).log_prob(z.double())
    got64 = DiagNormalMixture(locs.double(), scales.double(), logits.double()).log_prob(z.double())
    assert got64.shape == (2, 5) and got64.dtype == torch.float64
    torch.testing.assert_close(got64, exact, rtol=0, atol=1e-9)
    # float32 parameters and values: only the final rounding to float32 is lost
    got32 = DiagNormalMixture(locs, scales, logits).log_prob(z)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), exact, rtol=1e-6, atol=1e-5)


def test_default_weights_are_equal():
    locs, scales, _ = params()
    z = torch.randn(3, 5)
    torch.testing.assert_close(DiagNormalMixture(locs, scales).log_prob(z).double(),
                               reference(locs, scales, torch.zeros(6)).log_prob(z.double()))


def test_gradients_match_mixture_same_family():
    locs, scales, logits = (t.double().requires_grad_() for t in params())
    z = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(DiagNormalMixture(locs, scales, logits).log_prob(z).sum(),
                                (locs, scales, logits, z))
    expected = torch.autograd.grad(reference(locs, scales, logits).log_prob(z).sum(),
                                   (locs, scales, logits, z))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


def test_a_plate_expands_it_without_copying_the_parameters():
    locs, scales, logits = params()
    prior = DiagNormalMixture(locs, scales, logits)

    def model():
        with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 3, dim=-1):
            return pyro.sample("z", prior)

    tr = pyro.poutine.trace(model).get_trace()
    site = tr.nodes["z"]
    assert site["value"].shape == (4, 3, 5)
    assert site["fn"].batch_shape == (4, 3) and site["fn"].event_shape == (5,)
    assert site["fn"].base_dist.locs is locs  # not expanded
    torch.testing.assert_close(site["fn"].log_prob(site["value"]).double(),
                               reference(locs, scales, logits).log_prob(site["value"].double()))


def test_samples_follow_the_weights_and_the_moments():
    torch.manual_seed(0)
    locs = torch.tensor([[-20.0, 0.0], [0.0, 0.0], [20.0, 5.0]])
    scales = torch.tensor([[1.0, 0.5], [0.1, 2.0], [3.0, 1.0]])
    logits = torch.tensor([0.0, 1.0, -1.0])
    mix = DiagNormalMixture(locs, scales, logits)
    n = 200_000
    z = mix.sample((n,))
    assert z.shape == (n, 2)
    # the components are 20 apart: each sample's nearest location tells its component
    counts = torch.bincount((z[:, :1] - locs[:, 0]).abs().argmin(-1), minlength=3).double()
    p = logits.softmax(-1).double()
    assert ((counts / n - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all()
    mean, var = mix.mean.double(), mix.variance.double()
    assert ((z.double().mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert torch.allclose(z.double().var(0), var, rtol=0.02)
    # by hand: the mixture's moments
    torch.testing.assert_close(mean, (p[:, None] * locs.double()).sum(0))
    m2 = (p[:, None] * (scales.double() ** 2 + locs.double() ** 2)).sum(0)
    torch.testing.assert_close(var, m2 - mean ** 2)


def test_normalized_density_integrates_to_one_in_one_dim():
    mix = DiagNormalMixture(torch.tensor([[-1.0], [2.0]]), torch.tensor([[0.3], [1.5]]),
                            torch.tensor([0.5, -0.5]))
    grid = torch.linspace(-15, 20, 200_001).unsqueeze(-1)
    mass = torch.trapezoid(mix.log_prob(grid).double().exp(), grid.squeeze(-1).double())
    assert mass.item() == pytest.approx(1.0, abs=1e-6)
    w = torch.tensor([0.5, -0.5]).softmax(-1)
    at_zero = (w * torch.distributions.Normal(torch.tensor([-1.0, 2.0]), torch.tensor([0.3, 1.5]))
               .log_prob(torch.zeros(2)).exp()).sum()
    assert mix.log_prob(torch.zeros(1)).item() == pytest.approx(math.log(at_zero.item()), rel=1e-6)


@pytest.mark.parametrize("locs, scales, logits, match", [
    (torch.zeros(5), torch.ones(5), None, r"one shape \(K, D\), got \(5,\)"),
    (torch.zeros(3, 2), torch.ones(3, 4), None, r"got \(3, 2\) and \(3, 4\)"),
    (torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(4), r"one logit per component, shape \(3,\)"),
])
def test_bad_parameters_are_named(locs, scales, logits, match):
    with pytest.raises(PyrovaeError, match=match):
        DiagNormalMixture(locs, scales, logits)
