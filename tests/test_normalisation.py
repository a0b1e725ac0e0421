"""Every likelihood is a normalised density (or mass function) at extreme parameters.

Integrals are trapezoid sums in float64 on fine grids; the densities themselves are evaluated in the
dtype under test. The continuous Bernoulli's cases all hold logits 15, 20, 40 or 80, where torch's
``ContinuousBernoulli`` (clamped probabilities in the normaliser, raw logits in the cross-entropy)
integrates to 0.99, 0.80, 0.40 and 0.20 in float32 (0.90 at 40 and 0.45 at 80 in float64).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.nn.likelihoods import LIKELIHOODS, ContinuousBernoulliLogits, build_likelihood

LOGITS = [0.0, 1e-4, -1e-4, 15.0, -15.0, 20.0, -20.0, 40.0, -40.0, 80.0, -80.0]
DTYPES = [torch.float32, torch.float64]


def _grid(n: int = 400_001) -> torch.Tensor:
    """A float64 grid on [0, 1], fine enough for a density of width 1/80 near either end."""
    return torch.linspace(0, 1, n, dtype=torch.float64)


def _cb_density(dtype: torch.dtype, requires_grad: bool = False):
    """``(logits, x, log p(x))`` of the continuous-Bernoulli likelihood, ``log p`` shaped (grid, logits)."""
    logits = torch.tensor(LOGITS, dtype=dtype, requires_grad=requires_grad)
    x = _grid().to(dtype).unsqueeze(-1)
    return logits, x, build_likelihood("continuous-bernoulli").distribution(logits).log_prob(x)


def _cb_mean(eta: float) -> float:
    """The exact mean ``1 / (1 - exp(-eta)) - 1 / eta`` in double precision (1/2 at 0)."""
    return 0.5 if eta == 0 else -1 / math.expm1(-eta) - 1 / eta


def test_every_likelihood_is_covered():
    assert set(LIKELIHOODS) == {"bernoulli", "continuous-bernoulli", "gaussian", "laplace"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_sums_to_one_over_0_and_1(dtype):
    d = build_likelihood("bernoulli").distribution(torch.tensor(LOGITS, dtype=dtype))
    total = d.log_prob(torch.zeros(())).double().exp() + d.log_prob(torch.ones(())).double().exp()
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_continuous_bernoulli_integrates_to_one(dtype):
    _, x, lp = _cb_density(dtype)
    mass = torch.trapezoid(lp.double().exp(), x.double(), dim=0)
    torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_continuous_bernoulli_score_has_mean_zero(dtype):
    """``d/d eta`` of the total mass is 0: ``E_p[d log p(x) / d eta] = 0``, so the gradients the
    ELBO takes through the normaliser are those of a density (a clamped normaliser has none)."""
    logits, x, lp = _cb_density(dtype, requires_grad=True)
    mass = torch.trapezoid(lp.detach().double().exp(), dx=1 / (len(x) - 1), dim=0)
    density = lp.detach().double().exp() / mass
    # integrate density * score on the grid: one backward pass, trapezoid weights as the cotangent
    w = torch.full((len(x), 1), 1 / (len(x) - 1), dtype=torch.float64)
    w[0] = w[-1] = 0.5 / (len(x) - 1)
    (score_mean,) = torch.autograd.grad(lp, logits, grad_outputs=(w * density).to(dtype))
    torch.testing.assert_close(score_mean.double(), torch.zeros_like(score_mean.double()),
                               rtol=0, atol=2e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_continuous_bernoulli_mean_and_variance_are_the_density_s(dtype):
    lik = build_likelihood("continuous-bernoulli")
    logits, x, lp = _cb_density(dtype)
    p, xs = lp.double().exp(), x.double()
    mean = torch.trapezoid(p * xs, xs, dim=0)
    var = torch.trapezoid(p * (xs - mean) ** 2, xs, dim=0)
    d = lik.distribution(logits)
    torch.testing.assert_close(lik.mean(logits).double(), mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d.variance.double(), var, rtol=1e-3, atol=1e-7)
    # far from 0 the mean is 1 - 1/eta (eta > 0), 1/|eta| (eta < 0)
    assert lik.mean(torch.tensor(40.0, dtype=dtype)).item() == pytest.approx(1 - 1 / 40, rel=1e-6)
    assert lik.mean(torch.tensor(-80.0, dtype=dtype)).item() == pytest.approx(1 / 80, rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_continuous_bernoulli_samples_follow_the_density(dtype):
    """Reparameterized draws at extreme logits: in [0, 1], with the density's mean (5 standard
    errors), and with gradients of the right sign (a larger logit moves every draw up)."""
    logits = torch.tensor(LOGITS, dtype=dtype, requires_grad=True)
    d = build_likelihood("continuous-bernoulli").distribution(logits)
    pyro.set_rng_seed(0)
    z = d.rsample((20_000,))
    assert z.shape == (20_000, len(LOGITS)) and z.dtype == dtype
    assert ((z >= 0) & (z <= 1)).all()
    exact = torch.tensor([_cb_mean(e) for e in LOGITS], dtype=dtype)
    se = d.variance.detach().sqrt() / math.sqrt(len(z))
    assert ((z.detach().mean(0) - exact).abs() < 5 * se + 1e-6).all()
    (grad,) = torch.autograd.grad(z.sum(), logits)
    assert torch.isfinite(grad).all() and (grad >= 0).all()


def test_continuous_bernoulli_log_density_equals_torch_at_moderate_logits():
    """The logit form ``x eta - softplus(eta) + log(eta / tanh(eta / 2))`` is torch's density where
    torch's is right (float64, |eta| <= 6)."""
    pyro.set_rng_seed(0)
    logits = torch.linspace(-6, 6, 41, dtype=torch.float64)
    x = torch.rand(7, 1, dtype=torch.float64)
    mine = ContinuousBernoulliLogits(logits)
    ref = torch.distributions.ContinuousBernoulli(logits=logits)
    torch.testing.assert_close(mine.log_prob(x), ref.log_prob(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(mine.mean, ref.mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(mine.entropy(), ref.entropy(), rtol=0, atol=1e-8)
    torch.testing.assert_close(mine.cdf(x), ref.cdf(x), rtol=0, atol=1e-9)


def test_continuous_bernoulli_shapes_expand_and_to_event():
    d = ContinuousBernoulliLogits(torch.full((3, 1, 2, 2), 20.0))
    assert d.expand((5, 3, 1, 2, 2)).batch_shape == (5, 3, 1, 2, 2)
    event = d.to_event(3)
    assert event.batch_shape == (3,) and event.event_shape == (1, 2, 2)
    assert event.rsample((4,)).shape == (4, 3, 1, 2, 2)
    one_pixel = 0.3 * 20 - math.log(math.expm1(20) / 20)  # x eta - log Z(eta)
    torch.testing.assert_close(event.log_prob(torch.full((3, 1, 2, 2), 0.3)), torch.full((3,), 4 * one_pixel))
    with pytest.raises(ValueError):
        ContinuousBernoulliLogits(torch.zeros(2), validate_args=True).log_prob(torch.tensor([0.5, 1.5]))


def test_continuous_bernoulli_in_a_pyro_plate_broadcasts():
    def model():
        with pyro.plate("data", 4):
            pyro.sample("x", ContinuousBernoulliLogits(torch.tensor(20.0)).expand([4]))

    trace = pyro.poutine.trace(model).get_trace()
    site = trace.nodes["x"]
    assert site["value"].shape == (4,)
    assert torch.isfinite(site["fn"].log_prob(site["value"])).all()


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("scale", [1e-6, 1e-3, 0.1, 1e3, None])
def test_loc_scale_likelihoods_integrate_to_one(name, scale):
    """Over the real line (their support), at locations sigmoid(out) near 0, 1/2 and 1; ``None``
    is the learned scale at its start."""
    lik = build_likelihood(name, scale).double()
    out = torch.tensor(LOGITS, dtype=torch.float64)
    d = lik.distribution(out)
    s = float(lik.scale.detach())
    t = torch.linspace(-60, 60, 400_001, dtype=torch.float64).unsqueeze(-1)  # in units of the scale
    x = d.mean + s * t
    mass = torch.trapezoid(d.log_prob(x).exp(), x, dim=0)
    torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=1e-6)
    assert isinstance(d, dist.Normal if name == "gaussian" else dist.Laplace)
