"""beta, the KL weight: the KLWeight handler on any model, and beta and KL annealing in training
(the schedule reaches the loop, large beta shrinks the KL)."""

import csv
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

import pyrovae
from pyrovae import runs
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.sweep import sweep
from pyrovae.infer.beta import KLWeight, kl_weight
from pyrovae.infer.registry import make_elbo
from pyrovae.training.loop import train

# --------------------------------------------------------------------------- the handler


class TwoLatents:
    """x | b ~ N(b, 0.5), b | a ~ N(sum(a), 1), a ~ N(0, I_2); guide a ~ N(w x, 0.8), b ~ N(v x, 0.7).

    Every tensor is made here, so that running the programs creates none (see forbid_host_sync).
    """

    def __init__(self, n=4):
        self.w = torch.full((2,), 0.3, requires_grad=True)
        self.v = torch.full((), 0.6, requires_grad=True)
        self.zeros, self.ones = torch.zeros(n, 2), torch.ones(n, 2)
        self.s_a, self.s_b, self.s_x = torch.full((n, 2), 0.8), torch.full((n,), 0.7), torch.full((n,), 0.5)
        self.unit = torch.ones(n)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(self.zeros, self.ones).to_event(1))
            b = pyro.sample("b", dist.Normal(a.sum(-1), self.unit))
            pyro.sample("obs", dist.Normal(b, self.s_x), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(x.unsqueeze(-1) * self.w, self.s_a).to_event(1))
            pyro.sample("b", dist.Normal(self.v * x, self.s_b))


X = torch.tensor([0.5, -1.0, 2.0, 0.3])


def _traces(m, beta, x=X, **kwargs):
    guide_tr = poutine.trace(KLWeight(beta, **kwargs)(m.guide)).get_trace(x)
    model_tr = poutine.trace(poutine.replay(KLWeight(beta, **kwargs)(m.model), trace=guide_tr)).get_trace(x)
    return model_tr, guide_tr


def _sites(tr):
    return {n: s for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def _parts(model_tr, guide_tr):
    """Unweighted (obs log-lik, latent log p - log q) summed, from the traces' own densities."""
    m, g = _sites(model_tr), _sites(guide_tr)
    obs = m["obs"]["fn"].log_prob(m["obs"]["value"]).sum()
    latent = sum((m[n]["fn"].log_prob(m[n]["value"]) - g[n]["fn"].log_prob(g[n]["value"])).sum()
                 for n in ("a", "b"))
    return obs, latent


def test_klweight_scales_every_latent_site_in_model_and_guide():
    m = TwoLatents()
    model_tr, guide_tr = _traces(m, 0.3)
    for tr in (model_tr, guide_tr):
        for name in ("a", "b"):
            assert _sites(tr)[name]["scale"] == pytest.approx(0.3), name
    obs = _sites(model_tr)["obs"]
    assert obs["scale"] == 1.0 and obs["mask"] is None  # observed sites are left alone
    # the loss is -(log p(x|z) + beta (log p(z) - log q(z))), on the same draw
    for elbo in (pyro.infer.Trace_ELBO(), make_elbo("trace")):
        pyro.set_rng_seed(3)
        loss = elbo.loss(KLWeight(0.3)(m.model), KLWeight(0.3)(m.guide), X)
        pyro.set_rng_seed(3)
        obs_lp, latent = _parts(*_traces(m, 1.0))
        assert loss == pytest.approx(-(obs_lp + 0.3 * latent).item(), rel=1e-6)
        assert abs(latent.item()) > 1e-2  # beta makes a difference here


def test_klweight_composes_with_other_scales():
    m = TwoLatents()
    with poutine.scale(scale=2.0):
        model_tr, guide_tr = _traces(m, 0.5)
    assert _sites(guide_tr)["a"]["scale"] == pytest.approx(1.0)
    assert _sites(model_tr)["b"]["scale"] == pytest.approx(1.0)
    assert _sites(model_tr)["obs"]["scale"] == pytest.approx(2.0)


def test_beta_zero_masks_while_z_is_still_reparameterized():
    m = TwoLatents()
    model_tr, guide_tr = _traces(m, 0.0)
    for tr in (model_tr, guide_tr):
        for name in ("a", "b"):
            assert _sites(tr)[name]["mask"] is False, name
    assert _sites(model_tr)["obs"]["mask"] is None
    pyro.set_rng_seed(4)
    loss = make_elbo("trace").differentiable_loss(kl_weight(0, fn=m.model), kl_weight(0, fn=m.guide), X)
    pyro.set_rng_seed(4)
    model_tr, guide_tr = _traces(m, 1.0)
    obs_lp, _ = _parts(model_tr, guide_tr)
    assert loss.item() == pytest.approx(-obs_lp.item(), rel=1e-6)
    # b is drawn by rsample: the reconstruction term's gradient reaches the guide's parameter v
    # (obs depends on b alone, so w gets no gradient at beta 0: its KL terms are masked)
    got = torch.autograd.grad(loss, [m.w, m.v], allow_unused=True)
    want = torch.autograd.grad(-obs_lp, [m.v])[0]
    assert got[0] is None or torch.equal(got[0], torch.zeros_like(m.w))
    assert torch.allclose(got[1], want, atol=1e-6) and want.abs() > 1e-3


def test_tensor_beta_scales_with_no_host_read(forbid_host_sync):
    m = TwoLatents()
    elbo = make_elbo("trace", max_plate_nesting=1)
    beta = torch.zeros(())
    model_fn, guide_fn = KLWeight(beta)(m.model), KLWeight(beta)(m.guide)
    results = {}
    with pyro.validation_enabled(False):
        for value in (0.3, 0.0, 1.0):
            beta.fill_(value)  # in place, as a training loop does between steps
            pyro.set_rng_seed(5)
            with forbid_host_sync():
                loss = elbo.differentiable_loss(model_fn, guide_fn, X)
                assert loss.dim() == 0
            results[value] = loss
            pyro.set_rng_seed(5)
            number = elbo.differentiable_loss(KLWeight(value)(m.model), KLWeight(value)(m.guide), X)
            assert loss.item() == pytest.approx(number.item(), rel=1e-6), value
    assert torch.isfinite(results[0.0]) and results[0.3].item() != pytest.approx(results[1.0].item())
    model_tr, guide_tr = _traces(m, beta)
    assert torch.is_tensor(_sites(guide_tr)["a"]["scale"])
    assert _sites(guide_tr)["a"]["mask"] is None  # a tensor scales, it never masks


def test_sites_restricts_the_weighting():
    m = TwoLatents()
    for sites in (["a"], "a", {"a"}):
        model_tr, guide_tr = _traces(m, 0.25, sites=sites)
        for tr in (model_tr, guide_tr):
            assert _sites(tr)["a"]["scale"] == pytest.approx(0.25)
            assert _sites(tr)["b"]["scale"] == 1.0
    model_tr, guide_tr = _traces(m, 0.0, sites=["b"])
    assert _sites(guide_tr)["b"]["mask"] is False and _sites(guide_tr)["a"]["mask"] is None
    # sites naming an observed site still leave it alone
    model_tr, _ = _traces(m, 0.25, sites=["obs"])
    assert _sites(model_tr)["obs"]["scale"] == 1.0


def test_context_manager_weights_every_program_inside():
    m = TwoLatents()
    pyro.set_rng_seed(6)
    a = make_elbo("trace").loss(KLWeight(2.0)(m.model), KLWeight(2.0)(m.guide), X)
    pyro.set_rng_seed(6)
    with kl_weight(2.0):
        b = make_elbo("trace").loss(m.model, m.guide, X)
    assert a == pytest.approx(b, rel=1e-9)
    assert isinstance(kl_weight(2.0), KLWeight) and callable(kl_weight(2.0, fn=m.model))
    assert pyrovae.kl_weight is kl_weight and pyrovae.KLWeight is KLWeight


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), -math.inf, "1", None, True])
def test_bad_number_beta_is_a_clear_error(bad):
    with pytest.raises(PyrovaeError, match="beta must be a finite number >= 0"):
        KLWeight(bad)
    with pytest.raises(PyrovaeError, match="beta must be a finite number >= 0"):
        kl_weight(bad)


@pytest.mark.parametrize("shape", [(1,), (2,), (2, 2)])
def test_beta_tensor_must_be_0_dim(shape):
    with pytest.raises(PyrovaeError, match=r"beta must be a number or a 0-dim tensor, got shape"):
        KLWeight(torch.ones(shape))


# --------------------------------------------------------------------------- training


GREY = dict(dataset="digits", binarize="none", likelihood="gaussian", obs_scale=0.2, epochs=3)


@pytest.fixture(scope="module")
def grey_digits(digits):
    return digits.subset(600, 100)


@pytest.fixture(scope="module")
def beta_one(grey_digits):
    return train(data=grey_digits, beta=1.0, progress=False, **GREY)


def test_large_beta_gives_a_smaller_kl_than_beta_one(grey_digits, beta_one):
    one = beta_one
    eight = train(data=grey_digits, beta=8.0, progress=False, **GREY)
    kl_one, kl_eight = one.metrics[-1]["test_kl"], eight.metrics[-1]["test_kl"]
    assert kl_eight < 0.7 * kl_one
    # and reconstructions pay for it
    assert eight.metrics[-1]["test_recon"] < one.metrics[-1]["test_recon"]


def test_beta_zero_trains_without_a_prior_pull(grey_digits, beta_one):
    zero = train(data=grey_digits, beta=0.0, progress=False, **GREY)
    one = beta_one
    assert zero.metrics[-1]["test_kl"] > 2 * one.metrics[-1]["test_kl"]


def test_schedule_values_are_logged_and_resume_continues_the_curve(tmp_path, grey_digits):
    spec = "linear:epochs=2"
    full = train(data=grey_digits, kl_schedule=spec, beta=2.0, run_dir=tmp_path / "a",
                 progress=False, figures=False, **{**GREY, "epochs": 3})
    betas = [r["beta"] for r in full.metrics]
    spe = full.metrics[0]["step"]  # steps per epoch; the row logs the last step's beta
    assert betas[0] == pytest.approx(2.0 * (spe - 1) / (2 * spe))
    assert betas[1] == pytest.approx(2.0 * (2 * spe - 1) / (2 * spe)) and betas[2] == 2.0
    train(data=grey_digits, kl_schedule=spec, beta=2.0, run_dir=tmp_path / "b", progress=False,
          figures=False, **{**GREY, "epochs": 1})
    resumed = train(run_dir=tmp_path / "b", data=grey_digits, resume=True, epochs=3,
                    progress=False, figures=False)
    assert [r["beta"] for r in resumed.metrics] == betas
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["kl_schedule"] == spec


def test_sweep_writes_table_and_figures_from_its_runs(tmp_path, grey_digits):
    rows = sweep(tmp_path, betas=[0.5, 4.0], schedules=["cyclical:cycles=2,ratio=0.5"],
                 data=grey_digits, **{**GREY, "epochs": 2})
    assert [r["run"] for r in rows] == ["beta-0.5", "beta-4", "schedule-cyclical-cycles=2_ratio=0.5"]
    with open(tmp_path / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    for row in table:
        last = runs.read_metrics(tmp_path / row["run"])[-1]
        assert float(row["test_kl"]) == pytest.approx(last["test_kl"])
    assert float(table[0]["test_kl"]) > float(table[1]["test_kl"])  # beta 0.5 vs 4
    for fig in ("rate_distortion", "active_units", "kl_curves"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000
    assert "| beta-4 | 4 | constant |" in (tmp_path / "sweep.md").read_text()


def test_schedule_reaches_every_step_through_one_tensor(monkeypatch, grey_digits):
    """A schedule changes beta every step by filling one 0-dim tensor in place (so a compiled or
    captured step never sees a new constant): every handler the loop builds holds a tensor."""
    from pyrovae.training import loop

    handlers = []
    real = loop.KLWeight

    def spy(beta, *args, **kwargs):
        handlers.append(real(beta, *args, **kwargs))
        return handlers[-1]

    monkeypatch.setattr(loop, "KLWeight", spy)
    run = train(data=grey_digits.subset(200, 40), estimator="trace", kl_schedule="linear",
                progress=False, **{**GREY, "epochs": 2})
    assert run.metrics[0]["beta"] < 1.0 == run.metrics[1]["beta"]  # beta changed every step
    assert handlers and all(torch.is_tensor(h.beta) and h.beta.dim() == 0 for h in handlers)
    assert handlers[-1].beta.item() == pytest.approx(1.0)  # the last step's value
