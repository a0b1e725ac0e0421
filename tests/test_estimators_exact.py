"""Every estimator against closed forms on the linear-Gaussian model (float64, seeded).

Tolerances are Monte Carlo errors: a mean of draws must lie within 5 standard errors of its
reference, and each test also checks that the standard error is small next to the quantity it
resolves, so that a wrong estimator would fail.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.evaluation.diagnostics import gradient_draws
from pyrovae.infer.beta import KLWeight
from pyrovae.infer.estimators import STL_ELBO, DReG_ELBO
from pyrovae.infer.registry import make_elbo
from pyrovae.models.linear_gaussian import (
    closed_form_elbo,
    exact_guide,
    log_marginal,
    make_problem,
)

ALL_SPECS = [
    "trace", "meanfield", "tracegraph", "enum", "score", "stl",
    "iwae:5", "renyi:0.5,5", "dreg:5", "tail-adaptive:5",
]  # fmt: skip


pytestmark = [
    pytest.mark.usefixtures("single_thread"),  # see conftest.py
    pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites"),  # "enum", no discrete sites
]


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _loss_grads(loss, model, guide):
    """Gradient of a scalar loss w.r.t. (model params, guide params), flattened."""
    params = list(model.parameters()) + list(guide.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    n = len(list(model.parameters()))
    return {"model": _flat(grads[:n]), "guide": _flat(grads[n:])}


def _weighted(model, guide, beta):
    """Model and guide programs with the KL weight ``beta`` (1: the programs themselves)."""
    if isinstance(beta, float) and beta == 1.0:
        return model.model, guide.guide
    return KLWeight(beta)(model.model), KLWeight(beta)(guide.guide)


def _draws(elbo, model, guide, x, draws, seed=0, beta=1.0):
    groups = {"model": list(model.parameters()), "guide": list(guide.parameters())}
    samples, _ = gradient_draws(elbo, *_weighted(model, guide, beta), (x,), {}, groups, draws, seed)
    return samples


def _assert_mean(samples, exact, sharp=0.1, slack=1e-9):
    """Mean of ``samples`` (draws, P) within 5 standard errors of ``exact`` (P,), and the check
    resolves ``exact`` to ``sharp`` times its largest coordinate (if that is non-zero)."""
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    err = (mean - exact).abs()
    assert (err <= 5 * se + slack * (1 + exact.abs())).all(), (mean, exact, se)
    scale = exact.abs().max()
    if scale > 1e-6:
        assert se.max() < sharp * scale, (se, exact)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("diagonal", [True, False])
def test_closed_forms_are_consistent(diagonal):
    model, guide, x = make_problem(diagonal=diagonal)
    post = exact_guide(model, diagonal=diagonal)
    log_px = log_marginal(model, x)
    # Bayes' rule at an arbitrary z checks log p(x) and the posterior against each other.
    z = torch.randn(x.shape[0], 2, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    s = model.log_scale.exp()
    bayes = (
        dist.Normal(z @ model.weight.T + model.bias, s).log_prob(x).sum(-1)
        + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - dist.MultivariateNormal(post.loc(x), scale_tril=post.scale_tril).log_prob(z)
    )
    torch.testing.assert_close(bayes, log_px, rtol=0, atol=1e-10)
    torch.testing.assert_close(closed_form_elbo(model, post, x), log_px, rtol=0, atol=1e-10)
    # log p(x) - ELBO(q) = KL(q || p(z|x)) for an arbitrary guide.
    q = dist.MultivariateNormal(guide.loc(x), scale_tril=guide.scale_tril)
    p = dist.MultivariateNormal(post.loc(x), scale_tril=post.scale_tril)
    gap = log_px - closed_form_elbo(model, guide, x)
    torch.testing.assert_close(gap, torch.distributions.kl_divergence(q, p), rtol=0, atol=1e-10)
    assert (gap > 0.1).all()


# --------------------------------------------------------------------------- exact posterior


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_exact_posterior_every_bound_is_log_marginal(spec):
    """With q = p(z|x) every log weight equals log p(x), so each estimate is exact per draw
    (meanfield: only in expectation, as its E[log p(x|z)] term is still sampled)."""
    model, _, x = make_problem()
    guide = exact_guide(model, diagonal=True)
    elbo = make_elbo(spec)
    torch.manual_seed(0)
    losses = torch.tensor([elbo.loss(model.model, guide.guide, x) for _ in range(40)])
    target = -log_marginal(model, x).sum().item()
    if spec == "meanfield":
        se = losses.std() / math.sqrt(len(losses))
        assert abs(losses.mean() - target) < 5 * se and se > 1e-3
    else:
        torch.testing.assert_close(losses, torch.full_like(losses, target), rtol=0, atol=1e-9)


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if not s.startswith("tail")])
def test_exact_posterior_gradients(spec):
    """At q = p(z|x): the mean model gradient is -grad log p(x) (the bound touches log p(x)
    there for every theta-independent q), the mean guide gradient is 0 (q is optimal), and
    STL and DReG guide gradients have zero variance (Roeder et al. 2017; Tucker et al. 2019)."""
    model, _, x = make_problem()
    guide = exact_guide(model, diagonal=True)
    samples = _draws(make_elbo(spec), model, guide, x, draws=100)
    exact = _loss_grads(-log_marginal(model, x).sum(), model, guide)
    _assert_mean(samples["model"], exact["model"], sharp=0.25)
    _assert_mean(samples["guide"], torch.zeros_like(samples["guide"][0]))
    guide_var = samples["guide"].var(0).max().item()
    if spec in ("stl", "dreg:5"):
        assert guide_var < 1e-20
    else:  # the score term of q is still there: noisy even at the optimum
        assert guide_var > 1e-2


@pytest.mark.parametrize("make", [
    lambda: STL_ELBO(num_particles=3, max_plate_nesting=1),
    lambda: DReG_ELBO(num_particles=3, max_plate_nesting=1),
    lambda: make_elbo("stl", 3),
    lambda: make_elbo("dreg:3"),
])  # fmt: skip
def test_full_covariance_guide_zero_variance_at_optimum(make):
    """Same property with a MultivariateNormal guide, with and without vectorized particles."""
    model, _, x = make_problem(diagonal=False)
    guide = exact_guide(model, diagonal=False)
    samples = _draws(make(), model, guide, x, draws=10)
    assert samples["guide"].var(0).max() < 1e-20
    assert samples["guide"].abs().max() < 1e-10


# --------------------------------------------------------------------------- ELBO family


@pytest.mark.parametrize(
    "spec,particles,beta",
    [
        ("trace", 32, 1.0), ("meanfield", 32, 1.0), ("tracegraph", 32, 1.0), ("enum", 32, 1.0),
        ("stl", 32, 1.0), ("score", 512, 1.0),
        ("trace", 32, 0.5), ("stl", 32, torch.tensor(0.5)), ("score", 512, 0.5),
    ],
)  # fmt: skip
def test_elbo_family_is_unbiased_for_the_closed_form_gradient(spec, particles, beta):
    """Arbitrary diagonal guide: mean gradients for model *and* guide parameters equal the
    autograd gradient of the closed-form (beta-)ELBO; so does the mean loss."""
    model, guide, x = make_problem()
    elbo = make_elbo(spec, particles)
    samples = _draws(elbo, model, guide, x, draws=60, beta=beta)
    exact = _loss_grads(-closed_form_elbo(model, guide, x, beta).sum(), model, guide)
    _assert_mean(samples["model"], exact["model"])
    _assert_mean(samples["guide"], exact["guide"])
    torch.manual_seed(1)
    losses = torch.tensor([elbo.loss(*_weighted(model, guide, beta), x) for _ in range(20)])
    target = -closed_form_elbo(model, guide, x, beta).sum().item()
    assert abs(losses.mean() - target) < 5 * losses.std() / math.sqrt(20) + 1e-9


def test_stl_full_covariance_guide_is_unbiased():
    model, guide, x = make_problem(diagonal=False)
    samples = _draws(make_elbo("stl", 32), model, guide, x, draws=30)
    exact = _loss_grads(-closed_form_elbo(model, guide, x).sum(), model, guide)
    _assert_mean(samples["model"], exact["model"])
    _assert_mean(samples["guide"], exact["guide"])


# --------------------------------------------------------------------------- IWAE family


def _iwae_reference(model, guide, x, k, beta, batches=20, per_batch=500, seed=123):
    """Plain-torch IWAE bound sum_n E[log (1/k) sum_j w_jn] with its gradient, independent of
    Pyro: mean and standard error over ``batches`` batch means (losses, i.e. minus bound)."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(batches):
        eps = torch.randn(per_batch, k, *guide.loc(x).shape, generator=gen, dtype=x.dtype)
        z = guide.loc(x) + eps @ guide.scale_tril.T
        q = dist.Normal(guide.loc(x), guide.log_diag.exp()).log_prob(z).sum(-1)
        prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        lik = dist.Normal(z @ model.weight.T + model.bias, model.log_scale.exp())
        log_w = lik.log_prob(x).sum(-1) + beta * (prior - q)  # (per_batch, k, N)
        bound = (torch.logsumexp(log_w, 1) - math.log(k)).sum(-1).mean()
        g = _loss_grads(-bound, model, guide)
        grads.append(torch.cat([g["model"], g["guide"]]))
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / math.sqrt(batches)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_iwae_and_dreg_match_an_independent_iwae_gradient(beta):
    """K = 5. IWAE (RenyiELBO(alpha=0)) and DReG: identical model gradients draw by draw; both
    unbiased for model and guide gradients of the IWAE bound (reference: plain torch, not
    Pyro); DReG's guide gradient has lower variance. The data are replicated R times, so one
    draw averages R independent estimates (the bound is a sum over data points)."""
    model, guide, x = make_problem()
    reps = 100
    xr = x.repeat(reps, 1)
    iwae = _draws(make_elbo("iwae:5"), model, guide, xr, draws=40, beta=beta)
    dreg = _draws(make_elbo("dreg:5"), model, guide, xr, draws=40, beta=beta)
    torch.testing.assert_close(dreg["model"], iwae["model"], rtol=1e-9, atol=1e-9)

    ref_mean, ref_se = _iwae_reference(model, guide, x, 5, beta)
    n_model = iwae["model"].shape[1]
    for name, samples in (("iwae", iwae), ("dreg", dreg)):
        est = torch.cat([samples["model"], samples["guide"]], 1) / reps
        mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
        z = (mean - ref_mean).abs() / (se**2 + ref_se**2).sqrt()
        assert z.max() < 5, (name, z)
        assert se[n_model:].max() < 0.2 * ref_mean[n_model:].abs().max()
    assert dreg["guide"].var(0).sum() < 0.5 * iwae["guide"].var(0).sum()


def test_dreg_with_one_particle_is_stl():
    """With K = 1 the normalized weight is 1, so DReG's guide gradient is STL's."""
    model, guide, x = make_problem()
    dreg = _draws(make_elbo("dreg:1"), model, guide, x, draws=5, beta=0.5)
    stl = _draws(make_elbo("stl"), model, guide, x, draws=5, beta=0.5)
    for group in ("model", "guide"):
        torch.testing.assert_close(dreg[group], stl[group], rtol=1e-9, atol=1e-9)
    assert dreg["guide"].std(0).min() > 1e-3  # not the optimum: a real comparison


def test_iwae_bound_increases_with_k_toward_log_marginal():
    """Burda et al. 2016: ELBO = IWAE_1 <= IWAE_k <= IWAE_m <= log p(x) for k <= m, and
    IWAE_k -> log p(x). Replicated data, 10 draws per K."""
    model, guide, x = make_problem()
    reps = 200
    xr = x.repeat(reps, 1)
    log_px = log_marginal(model, x).sum().item()
    elbo = closed_form_elbo(model, guide, x).sum().item()
    means, ses = [], []
    for k in (1, 8, 64):
        est = make_elbo(f"dreg:{k}")
        torch.manual_seed(k)
        b = -torch.tensor([est.loss(model.model, guide.guide, xr) for _ in range(10)]) / reps
        means.append(b.mean().item())
        ses.append(b.std().item() / math.sqrt(10))
    assert abs(means[0] - elbo) < 5 * ses[0]
    for i in range(2):
        assert means[i + 1] - means[i] > 5 * math.hypot(ses[i], ses[i + 1])
    assert means[-1] < log_px
    assert log_px - means[-1] < 0.05 * (log_px - elbo)


def test_renyi_limits():
    """On the same samples: Renyi with alpha -> 1 is the ELBO estimate (value and gradient),
    with alpha = 0 it is the IWAE estimate (checked against DReG's own implementation of the
    bound), and ELBO <= Renyi_0.5 <= IWAE (power-mean inequality)."""
    model, guide, x = make_problem()

    def loss_and_grad(spec, particles=1, seed=0):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        loss = make_elbo(spec, particles).loss(model.model, guide.guide, x)
        g = _draws(make_elbo(spec, particles), model, guide, x, draws=2, seed=seed)
        return loss, torch.cat([g["model"][0], g["guide"][0]])

    for seed in range(3):
        trace, g_trace = loss_and_grad("trace", 8, seed)
        near_one, g_near_one = loss_and_grad("renyi:0.999999,8", seed=seed)
        half, _ = loss_and_grad("renyi:0.5,8", seed=seed)
        zero, g_zero = loss_and_grad("renyi:0,8", seed=seed)
        dreg, g_dreg = loss_and_grad("dreg:8", seed=seed)
        assert abs(near_one - trace) < 1e-4 * abs(trace)
        torch.testing.assert_close(g_near_one, g_trace, rtol=1e-4, atol=1e-4)
        assert abs(zero - dreg) < 1e-10
        n_model = len(_flat(model.parameters()))
        torch.testing.assert_close(g_zero[:n_model], g_dreg[:n_model])
        assert trace > half + 1e-6 and half > zero + 1e-6


# --------------------------------------------------------------------------- evaluation: log p(x)


class Pair:
    """The linear-Gaussian model and a guide, two modules, as the one object pyrovae takes."""

    def __init__(self, lg_model, lg_guide):
        self.lg_model, self.lg_guide = lg_model, lg_guide

    def model(self, x):
        self.lg_model.model(x)

    def guide(self, x):
        self.lg_guide.guide(x)


@pytest.mark.parametrize("diagonal", [True, False])
@pytest.mark.parametrize("k", [1, 2, 7, 100])
def test_log_likelihood_with_the_exact_posterior_is_log_marginal(k, diagonal):
    """q = p(z|x): every importance weight is p(x), so logmeanexp_k is log p(x) for any k (a
    missing or doubled ``- log k`` would be off by log k)."""
    model, _, x = make_problem(num_data=5, diagonal=diagonal)
    pair = Pair(model, exact_guide(model, diagonal=diagonal))
    got = pyrovae.log_likelihood(pair, x, k)
    assert got.shape == (5,)
    torch.testing.assert_close(got.double(), log_marginal(model, x).detach(), rtol=0, atol=1e-4)


def test_log_likelihood_approaches_log_marginal_as_k_grows():
    """An arbitrary guide: E[log-likelihood_k] increases with k toward log p(x) (Burda et al. 2016),
    from the ELBO at k = 1; data replicated so the mean over examples has a small error (the gap
    to log p(x) per example, whose spread is the Monte Carlo error alone)."""
    model, guide, x = make_problem()
    reps = 1000
    xr = x.repeat(reps, 1)
    pair = Pair(model, guide)
    log_px = log_marginal(model, xr).detach()
    elbo_gap = (log_marginal(model, x) - closed_form_elbo(model, guide, x)).mean().item()
    assert elbo_gap > 0.3
    gaps, ses = [], []
    for k in (1, 3, 10, 1000):
        gap = log_px - pyrovae.log_likelihood(pair, xr, k).double()
        gaps.append(gap.mean().item())
        ses.append(gap.std().item() / math.sqrt(len(gap)))
    assert abs(gaps[0] - elbo_gap) < 5 * ses[0]
    for i in range(3):
        assert gaps[i] - gaps[i + 1] > 5 * math.hypot(ses[i], ses[i + 1]), (gaps, ses)
    assert gaps[-1] > -5 * ses[-1]  # a lower bound in expectation
    assert gaps[-1] < 0.05 * elbo_gap


@pytest.mark.parametrize("max_elements", [20, 60, 10_000])
def test_log_likelihood_in_chunks_of_draws_and_examples(max_elements):
    """A small ``max_elements`` splits the k draws (and the examples) into chunks: exact with the
    exact posterior, and equal in distribution to the unchunked estimate with any guide."""
    model, guide, x = make_problem(num_data=6)
    exact = Pair(model, exact_guide(model, diagonal=True))
    for k in (7, 50):  # 7 leaves a remainder chunk of draws
        torch.testing.assert_close(
            pyrovae.log_likelihood(exact, x, k, max_elements=max_elements).double(),
            log_marginal(model, x).detach(), rtol=0, atol=1e-4)
    pair, xr = Pair(model, guide), x.repeat(100, 1)
    pyro.set_rng_seed(0)
    one = pyrovae.log_likelihood(pair, xr, 50).double()
    pyro.set_rng_seed(0)
    chunked = pyrovae.log_likelihood(pair, xr, 50, max_elements=max_elements).double()
    diff = chunked - one
    assert abs(diff.mean().item()) < 5 * diff.std().item() / math.sqrt(len(diff)) + 1e-9


def test_log_likelihood_keeps_the_dtype_of_the_weights():
    """float64 weights give a float64 log p(x) (a float32 result would round values such as
    -1e5 nats, an image's log-likelihood, to about 0.01)."""
    model, _, x = make_problem()
    pair = Pair(model, exact_guide(model, diagonal=True))
    assert pyrovae.log_likelihood(pair, x, 3).dtype == torch.float64
    assert pyrovae.log_likelihood(pair, x, 3, max_elements=20).dtype == torch.float64


def test_log_likelihood_checks_k():
    model, guide, x = make_problem()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(pyrovae.PyrovaeError, match=r"importance samples .*must be a whole number >= 1"):
            pyrovae.log_likelihood(Pair(model, guide), x, bad)


# --------------------------------------------------------------------------- evaluation: ELBO terms


def test_elbo_terms_closed_form_kl_is_exact():
    """Single latent site, Normal guide and prior: the KL is taken in closed form, exactly; the
    ELBO is the closed-form one within Monte Carlo error (one draw per example)."""
    model, guide, x = make_problem()
    reps = 2000
    xr = x.repeat(reps, 1)
    terms = pyrovae.elbo_terms(Pair(model, guide), xr, batch_size=700)
    assert terms["kl_method"] == {"latent": "closed form"}
    q = dist.Normal(guide.loc(x), guide.log_diag.exp()).to_event(1)
    p = dist.Normal(torch.zeros_like(guide.loc(x)), 1.0).to_event(1)
    kl = torch.distributions.kl_divergence(q, p).mean().item()
    assert terms["kl"] == pytest.approx(kl, rel=1e-6)
    assert terms["elbo"] == pytest.approx(terms["recon"] - terms["kl"], rel=1e-9)
    lw = pyrovae.log_likelihood(Pair(model, guide), xr, 1).double()  # one-draw ELBOs: a spread bound
    se = lw.std().item() / math.sqrt(len(lw))
    assert abs(terms["elbo"] - closed_form_elbo(model, guide, x).mean().item()) < 5 * se


class Hierarchy:
    """z1 ~ N(0, 1), z2 | z1 ~ N(z1, 1), x | z2 ~ N(z2, 0.5); guide x -> z1 -> z2:
    q(z1|x) = N(a x, s1), q(z2|z1, x) = N(b z1 + c x, s2). z2 depends on z1's draw in the guide, so
    z1's KL term cannot be taken in closed form; z2's (the last site) can."""

    def __init__(self, learnable=False):
        values = [torch.tensor(v, requires_grad=learnable) for v in (0.4, 0.7, 0.2, 0.6, 0.5)]
        self.a, self.b, self.c, self.s1, self.s2 = values

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x), 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("obs", dist.Normal(z2, 0.5), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(self.a * x, self.s1))
            pyro.sample("z2", dist.Normal(self.b * z1 + self.c * x, self.s2))


@pytest.mark.parametrize("learnable", [False, True])
def test_elbo_terms_of_a_hierarchical_guide_match_trace_elbo(learnable):
    """With trainable guide parameters the draws carry gradients, so the dependence of z2 on z1 is
    found by autograd (under elbo_terms' no_grad too); without, z1 is not the last site and its
    dependence cannot be seen, so it is Monte Carlo as well."""
    h = Hierarchy(learnable)
    x = torch.tensor([-1.5, 0.2, 2.0, 0.9], dtype=torch.float64)
    reps = 2500
    xr = x.repeat(reps)
    terms = pyrovae.elbo_terms(h, xr)
    assert terms["kl_method"] == {"z1": "monte carlo", "z2": "closed form"}
    assert terms["elbo"] == pytest.approx(terms["recon"] - terms["kl"], rel=1e-9)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        reference = -pyro.infer.Trace_ELBO(num_particles=4000, vectorize_particles=True,
                                           max_plate_nesting=1).loss(h.model, h.guide, x) / len(x)
    lw = pyrovae.log_likelihood(h, xr, 1).double()  # one-draw ELBOs: bounds the error's spread
    se = lw.std().item() / math.sqrt(len(lw))
    assert abs(terms["elbo"] - reference) < 5 * se + 5 * lw.std().item() / math.sqrt(4000 * len(x))
    assert se < 0.05 * abs(reference)
