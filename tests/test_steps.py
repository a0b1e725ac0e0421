"""``--compile {eager,graph,auto}``: choosing the step, and a captured step that never syncs.

Eager and graph steps both run ``elbo.differentiable_loss(KLWeight(beta)(model.model),
KLWeight(beta)(model.guide), *batch)``, the estimator's one implementation. On the CPU the captured
part of the step (loss and backward) runs under a guard that fails on any host read of a tensor,
and the graph loop runs with a simulated CUDA-graph backend; on a GPU (skipped here without one)
the real capture runs under ``torch.cuda.set_sync_debug_mode("error")``.
"""

import contextlib

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrovae import runs
from pyrovae.cli.main import main
from pyrovae.data.datasets import load_dataset
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.metrics import elbo_terms, log_likelihood
from pyrovae.infer.beta import KLWeight
from pyrovae.infer.registry import capture_problem, estimator_names, make_elbo
from pyrovae.models.vae import VAE, AutoEncoder, DenoisingAutoEncoder
from pyrovae.training import loop as training
from pyrovae.training import steps
from pyrovae.training.distributed import Context, GradientSum
from pyrovae.training.loop import TrainingDiverged, make_optimizer, train
from pyrovae.training.steps import EagerStep, GraphStep, choose
from tests.conftest import HostSync

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU, GPU = torch.device("cpu"), torch.device("cuda")  # the device object alone: no GPU needed
ARGS = {"iwae": "iwae:3", "renyi": "renyi:0.5,3", "dreg": "dreg:3", "tail-adaptive": "tail-adaptive:3"}
ALL_SPECS = [ARGS.get(name, name) for name in estimator_names()]
CAPTURE_READY = [spec for spec in ALL_SPECS if capture_problem(spec) is None]


# --------------------------------------------------------------------------- choosing the step


def test_the_registry_says_which_entries_are_capture_ready():
    assert {s.partition(":")[0] for s in ALL_SPECS} == set(estimator_names())
    assert {s.partition(":")[0] for s in ALL_SPECS if s not in CAPTURE_READY} == {"tracegraph", "enum"}
    for spec in ALL_SPECS:
        why = capture_problem(spec)
        assert why is None or spec.partition(":")[0] in why


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_choose_follows_the_registry_on_a_gpu(spec):
    why = capture_problem(spec)
    assert choose("eager", GPU, spec) == ("eager", None)
    if why is None:
        assert choose("auto", GPU, spec) == ("graph", None)
        assert choose("graph", GPU, spec) == ("graph", None)
    else:
        assert choose("auto", GPU, spec) == ("eager", why)
        with pytest.raises(PyrovaeError, match="--compile graph: .*use --compile eager") as info:
            choose("graph", GPU, spec)
        assert why in str(info.value)


def test_choose_asks_the_registry(monkeypatch):
    monkeypatch.setattr(steps, "capture_problem", lambda spec: f"no graphs for {spec} today")
    assert choose("auto", GPU, "trace") == ("eager", "no graphs for trace today")


def test_graph_on_the_cpu_is_one_clear_error():
    with pytest.raises(PyrovaeError, match="--compile graph: CUDA graphs need a CUDA device.*"
                                           "use --compile eager"):
        choose("graph", CPU, "trace")


def test_auto_falls_back_to_eager_and_says_why():
    assert choose("auto", CPU, "trace") == ("eager", "CUDA graphs need a CUDA device, and "
                                                     "this run trains on cpu")
    assert choose("auto", GPU, "dreg:5") == ("graph", None)
    assert choose("auto", GPU, "tail-adaptive:4") == ("graph", None)
    assert choose("eager", CPU, "tracegraph") == ("eager", None)
    with pytest.raises(PyrovaeError, match="unknown --compile 'fast'"):
        choose("fast", CPU, "trace")


@pytest.mark.parametrize("old, replacement", [("graph", "tracegraph"), ("jit", "'trace'")])
def test_removed_estimator_names_are_refused_with_the_replacement(old, replacement):
    with pytest.raises(PyrovaeError, match=f"unknown estimator '{old}'.*{replacement}"):
        choose("auto", GPU, old)
    with pytest.raises(PyrovaeError, match=f"unknown estimator '{old}'.*{replacement}"):
        make_elbo(old)


def test_cli_graph_on_cpu_and_auto_fallback(tmp_path, capsys, single_thread):
    args = ["train", "--dataset", "digits", "--limit", "60", "--epochs", "1", "--no-progress"]
    assert main([*args, "--compile", "graph", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--compile graph: CUDA graphs need a CUDA device" in err
    assert not (tmp_path / "g" / runs.CHECKPOINT).exists()

    assert main([*args, "--compile", "auto", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "--compile auto trains eagerly: CUDA graphs need a CUDA device" in err
    assert runs.read_metrics(tmp_path / "a")[0]["compile"] == "eager"


def test_an_unknown_compile_mode_is_refused_before_training(tmp_path):
    with pytest.raises(PyrovaeError, match="compile must be eager, graph or auto, got 'fast'"):
        train(dataset="digits", limit=50, epochs=1, compile="fast", run_dir=tmp_path)
    assert not (tmp_path / runs.CHECKPOINT).exists()


# --------------------------------------------------------------------------- no host reads


def _loss_fn(elbo, model, beta):
    """What the training loop steps: the estimator's loss under the KL weight ``beta``."""
    model_fn, guide_fn = KLWeight(beta)(model.model), KLWeight(beta)(model.guide)
    return lambda *batch: elbo.differentiable_loss(model_fn, guide_fn, *batch)


@pytest.mark.parametrize("spec", CAPTURE_READY)
@pytest.mark.parametrize("kind", ["vae", "ae", "dae", "gaussian-conv", "continuous-bernoulli", "laplace"])
def test_the_captured_part_of_the_step_reads_nothing_on_the_host(spec, kind, forbid_host_sync,
                                                                 single_thread):
    if spec == "score" and kind in ("ae", "dae"):
        pytest.skip("score refuses point codes (tests/test_objectives.py)")
    x = torch.bernoulli(torch.rand(5, 1, 8, 8))
    if kind == "gaussian-conv":
        vae = VAE((1, 8, 8), z_dim=3, hidden=[8], net="conv", likelihood="gaussian")
        x = torch.rand(5, 1, 8, 8)
    elif kind in ("continuous-bernoulli", "laplace"):
        vae = VAE((1, 8, 8), z_dim=3, hidden=[8], likelihood=kind,
                  obs_scale=0.2 if kind == "laplace" else None)
        x = torch.rand(5, 1, 8, 8)
    else:
        vae = {"vae": VAE, "ae": AutoEncoder, "dae": DenoisingAutoEncoder}[kind]((1, 8, 8), z_dim=3,
                                                                               hidden=[8])
    beta = torch.tensor(0.5)
    elbo = make_elbo(spec, max_plate_nesting=1)
    step = GraphStep(_loss_fn(elbo, vae, beta), make_optimizer(vae.parameters(), 1e-3),
                     GradientSum(Context(), list(vae.parameters())), graphs=Simulated())
    with pyro.validation_enabled(False), forbid_host_sync():
        loss = step.forward_backward((x,))
        beta.fill_(0.0)  # a schedule's update, in place
        step.forward_backward((x,))
    assert loss.shape == () and torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.decoder.parameters())


def test_the_guard_catches_pyros_host_reads(forbid_host_sync):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[8])
    x = torch.bernoulli(torch.rand(5, 1, 8, 8))
    with forbid_host_sync(), pytest.raises(HostSync, match="host synchronisation"):
        pyro.infer.Trace_ELBO().loss_and_grads(vae.model, vae.guide, x)  # Pyro reads the loss
    with pyro.validation_enabled(False), forbid_host_sync(), \
            pytest.raises(HostSync, match="host synchronisation"):
        make_elbo("trace").loss(vae.model, vae.guide, x)  # a float: one read, by design


def test_the_host_sync_guard_is_not_vacuous(forbid_host_sync):
    t = torch.ones(())
    with forbid_host_sync():
        for read in (lambda: t.item(), lambda: bool(t), lambda: float(t), lambda: t.tolist(),
                     lambda: torch.tensor(0.5)):
            with pytest.raises(AssertionError, match="host synchronisation"):
                read()
    assert t.item() == 1.0 and bool(t)  # restored on exit


def test_log_likelihood_reads_nothing_on_the_host(forbid_host_sync):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[8])
    x = torch.bernoulli(torch.rand(40, 1, 8, 8))
    with forbid_host_sync():
        out = log_likelihood(vae, x, k=50, max_elements=64 * 50 * 3)  # several chunks
    assert out.shape == (40,) and torch.isfinite(out).all()


def test_held_out_evaluation_reads_the_host_once_whatever_the_batching(monkeypatch):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[8])
    x = torch.bernoulli(torch.rand(40, 1, 8, 8))
    reads = []
    real_item = torch.Tensor.item

    def counting_item(self):
        reads.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    counts = []
    for batch_size in (40, 7, 1):
        reads.clear()
        elbo_terms(vae, x, batch_size)
        log_likelihood(vae, x, k=50, max_elements=64 * 50 * 3)  # forces several chunks
        counts.append(len(reads))
    assert counts[0] == counts[1] == counts[2] <= 2


# --------------------------------------------------------------------------- simulated graphs


class Simulated:
    """CUDA graphs on the CPU, for the loop's plumbing: capture records the function, replay runs
    it again (a real capture records kernels and replays them without Python)."""

    def __init__(self):
        self.captures = self.replays = 0

    @contextlib.contextmanager
    def side_stream(self):
        yield

    def capture(self, fn, pool=None):
        self.captures += 1
        return fn, None

    def pool(self, graph):
        return None

    def replay(self, fn):
        self.replays += 1
        fn()


@pytest.fixture
def simulated(monkeypatch):
    """``--compile graph`` on the CPU with :class:`Simulated` graphs; yields them."""
    made = []

    def backend(device=None):
        made.append(Simulated())
        return made[-1]

    monkeypatch.setattr(steps, "choose", lambda *args: ("graph", None))
    monkeypatch.setattr(steps, "CudaGraphs", backend)
    return made


@pytest.mark.parametrize("spec", ["trace", "dreg:3", "tail-adaptive:3"])
def test_graph_step_matches_the_eager_step(spec, single_thread):
    """The same loss function, the same draws: the same losses and parameters after warm-up,
    capture and replays, with beta changed in place between steps."""
    x = torch.bernoulli(torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    out = []
    for graph in (False, True):
        torch.manual_seed(1)
        vae = VAE((1, 8, 8), z_dim=3, hidden=[8])
        beta = torch.ones(())
        params = list(vae.parameters())
        args = (_loss_fn(make_elbo(spec, max_plate_nesting=1), vae, beta),
                make_optimizer(params, 1e-2), GradientSum(Context(), params))
        step = GraphStep(*args, graphs=Simulated()) if graph else EagerStep(*args)
        pyro.set_rng_seed(3)
        losses = []
        with pyro.validation_enabled(False):
            for i in range(steps.WARMUP_STEPS + 3):
                beta.fill_(0.2 * i)
                loss = step((x,))
                assert loss.shape == ()
                losses.append(loss.item())
        out.append((losses, [p.detach().clone() for p in params]))
        if graph:
            assert step.captured is not None and step.graphs.replays == 2 * 3
    (eager_losses, eager_params), (graph_losses, graph_params) = out
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    for p, q in zip(eager_params, graph_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_captured_step_refuses_a_batch_of_another_shape(single_thread):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[8])
    params = list(vae.parameters())
    step = GraphStep(_loss_fn(make_elbo("trace", max_plate_nesting=1), vae, torch.ones(())),
                     make_optimizer(params, 1e-3), GradientSum(Context(), params), graphs=Simulated())
    x = torch.bernoulli(torch.rand(4, 1, 8, 8))
    for _ in range(steps.WARMUP_STEPS + 1):
        step((x,))
    with pytest.raises(PyrovaeError, match="the loop must drop partial batches"):
        step((x[:3],))


SMALL = dict(dataset="digits", epochs=2, batch_size=25, hidden=[16], z_dim=3, seed=2,
             kl_schedule="linear", progress=False, figures=False)


def test_the_graph_loop_drops_partial_batches_and_replays(tmp_path, simulated, single_thread):
    run = train(limit=110, run_dir=tmp_path, **SMALL)  # 110 = 4 full batches of 25, and 10
    (sim,) = simulated
    assert (sim.captures, sim.replays) == (2, 2 * (8 - steps.WARMUP_STEPS))
    assert [(r["step"], r["compile"]) for r in run.metrics] == [(4, "graph"), (8, "graph")]
    assert run.metrics[-1]["train_loss"] < run.metrics[0]["train_loss"]


def _same_parameters(a, b):
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)
    key = "test_elbo" if a.metrics[-1]["test_elbo"] is not None else "test_recon"  # an AE: no ELBO
    assert a.metrics[-1][key] == pytest.approx(b.metrics[-1][key], rel=1e-5)


@pytest.mark.parametrize("model, estimator", [("vae", "trace"), ("ae", "trace"), ("vae", "iwae:3")])
def test_the_graph_loop_trains_builtins_like_the_eager_one(model, estimator, tmp_path, simulated,
                                                           monkeypatch, single_thread):
    # 100 examples in batches of 25: both loops take the same batches, beta changes every step
    kw = dict(SMALL, model=model, estimator=estimator, epochs=1 if estimator != "trace" else 2)
    graph = train(limit=100, run_dir=tmp_path / "graph", **kw)
    assert {r["compile"] for r in graph.metrics} == {"graph"} and len(simulated) == 1
    monkeypatch.undo()
    eager = train(limit=100, run_dir=tmp_path / "eager", **kw)
    assert {r["compile"] for r in eager.metrics} == {"eager"}
    _same_parameters(graph, eager)


def test_the_graph_loop_resumes_eagerly(tmp_path, simulated, monkeypatch, single_thread):
    graph = train(limit=100, run_dir=tmp_path / "graph", **SMALL)
    monkeypatch.undo()
    eager = train(limit=100, run_dir=tmp_path / "eager", **SMALL)
    _same_parameters(graph, eager)
    kw = dict(resume=True, epochs=3, progress=False, figures=False)
    resumed = train(run_dir=tmp_path / "graph", **kw)
    assert [r["compile"] for r in resumed.metrics] == ["graph", "graph", "eager"]
    _same_parameters(resumed, train(run_dir=tmp_path / "eager", **kw))


class TwoLevelVAE(nn.Module):
    """A user's model: two latent layers (``top -> bottom -> pixels``), its own site and plate
    names, a ``pyro.param`` (an output temperature) beside the networks, a hierarchical guide."""

    def __init__(self, pixels=64, hidden=16, top=2, bottom=4):
        super().__init__()
        self.top_dim = top
        self.up = nn.Sequential(nn.Flatten(-3), nn.Linear(pixels, hidden), nn.Tanh(),
                                nn.Linear(hidden, 2 * bottom))
        self.up_top = nn.Linear(bottom, 2 * top)
        self.down_top = nn.Linear(top, 2 * bottom)
        self.down = nn.Sequential(nn.Linear(bottom, hidden), nn.Tanh(), nn.Linear(hidden, pixels))

    @staticmethod
    def _normal(h):
        loc, raw = h.chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

    def model(self, x):
        pyro.module("two_level_down", nn.ModuleList([self.down_top, self.down]))
        temperature = pyro.param("temperature", torch.ones(()), constraint=dist.constraints.positive)
        with pyro.plate("images", x.shape[0]):
            top = pyro.sample("top", dist.Normal(x.new_zeros(self.top_dim), x.new_ones(self.top_dim))
                              .to_event(1))
            bottom = pyro.sample("bottom", self._normal(self.down_top(top)))
            logits = self.down(bottom) / temperature
            pyro.sample("pixels", dist.Bernoulli(logits=logits).to_event(1), obs=x.flatten(1))

    def guide(self, x):
        pyro.module("two_level_up", nn.ModuleList([self.up, self.up_top]))
        with pyro.plate("images", x.shape[0]):
            bottom = pyro.sample("bottom", self._normal(self.up(x)))
            pyro.sample("top", self._normal(self.up_top(bottom)))


def test_the_graph_loop_trains_a_user_model_like_the_eager_one(tmp_path, simulated, monkeypatch,
                                                               single_thread):
    """Requirement: the simulated graph loop trains a user's model (module and pyro.param
    parameters) to the same values as the eager loop."""
    data = load_dataset("digits").subset(100, 40)
    kw = dict(data=data, epochs=2, batch_size=25, seed=2, binarize="dynamic", kl_schedule="linear",
              progress=False, figures=False)
    out = []
    for graph in (True, False):
        if not graph:
            monkeypatch.undo()
        pyro.clear_param_store()
        torch.manual_seed(7)
        model = TwoLevelVAE()
        initial = [p.detach().clone() for p in model.parameters()]
        run = train(model=model, run_dir=tmp_path / str(graph), **kw)
        assert run.model is model
        assert {r["compile"] for r in run.metrics} == {"graph" if graph else "eager"}
        assert not all(torch.equal(p, q) for p, q in zip(initial, model.parameters(), strict=True))
        temperature = pyro.param("temperature").detach().clone()
        assert temperature != 1.0  # the pyro.param was trained too
        out.append((run, temperature))
    (graph_run, graph_t), (eager_run, eager_t) = out
    assert len(simulated) == 1 and simulated[0].replays == 2 * (8 - steps.WARMUP_STEPS)
    _same_parameters(graph_run, eager_run)
    torch.testing.assert_close(graph_t, eager_t, rtol=1e-4, atol=1e-5)


def test_a_nan_in_the_graph_loop_is_caught_at_the_next_check(tmp_path, simulated, monkeypatch,
                                                             single_thread):
    """On the CPU every step's accumulated loss is checked: a NaN from step 5 (epoch 2) stops the
    run there, and epoch 1's checkpoint stays."""
    real_make_elbo = training.make_elbo
    poisoned = {"on": False}

    def make_poisoned(*args, **kwargs):
        elbo = real_make_elbo(*args, **kwargs)
        real = elbo.differentiable_loss

        def differentiable_loss(*a, **k):
            loss = real(*a, **k)
            return loss * float("nan") if poisoned["on"] else loss

        elbo.differentiable_loss = differentiable_loss
        return elbo

    def poison_after_epoch_1(run, row):
        poisoned["on"] = True

    monkeypatch.setattr(training, "make_elbo", make_poisoned)
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 2, step 5.*epoch 1\) is intact"):
        train(limit=100, run_dir=tmp_path, callbacks=[poison_after_epoch_1], **{**SMALL, "epochs": 3})
    assert torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)["epoch"] == 1
    assert simulated[0].replays > 0  # the NaN came from a replayed step


def test_graph_mode_refuses_data_that_fill_no_full_batch(tmp_path, simulated):
    with pytest.raises(PyrovaeError, match="the 30 training examples do not fill one --batch-size "
                                           "40: use a smaller --batch-size or --compile eager"):
        train(dataset="digits", limit=30, epochs=1, batch_size=40, run_dir=tmp_path)
    assert not (tmp_path / runs.CHECKPOINT).exists()


def test_graph_mode_refuses_a_batch_smaller_than_the_process_count(tmp_path, simulated,
                                                                   monkeypatch):
    monkeypatch.setattr(training.distributed, "setup", lambda device: Context(0, 4))
    with pytest.raises(PyrovaeError, match="--batch-size 3 is below the 4 processes"):
        train(dataset="digits", limit=30, epochs=1, batch_size=3, run_dir=tmp_path)
    assert not (tmp_path / runs.CHECKPOINT).exists()


# --------------------------------------------------------------------------- on a real GPU


@cuda
@pytest.mark.parametrize("spec", CAPTURE_READY)
def test_graph_step_trains_without_syncs_and_matches_eager_on_cuda(spec):
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16]).cuda()
    x = torch.bernoulli(torch.rand(32, 1, 8, 8, device="cuda"))
    beta = torch.ones((), device="cuda")
    elbo = make_elbo(spec, max_plate_nesting=1)
    loss_fn = _loss_fn(elbo, vae, beta)
    params = list(vae.parameters())
    step = GraphStep(loss_fn, make_optimizer(params, 1e-3, capturable=True),
                     GradientSum(Context(), params))
    with pyro.validation_enabled(False):
        for _ in range(steps.WARMUP_STEPS + 1):  # warm-up steps, then the capture
            step((x,))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                beta.fill_(0.5)
                loss = step((x,))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss)

        # the same draws give the same loss: a captured loss against the eager one
        static_x = x.clone()
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            loss_fn(static_x)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g), torch.no_grad():
            captured = loss_fn(static_x)
        torch.cuda.manual_seed(11)
        with torch.no_grad():
            eager = loss_fn(x)
        torch.cuda.manual_seed(11)
        g.replay()
    assert captured.item() == pytest.approx(eager.item(), rel=1e-5)


@cuda
def test_compile_graph_trains_and_resumes_on_cuda(tmp_path):
    run = train(dataset="digits", limit=200, epochs=2, batch_size=32, device="cuda",
                compile="graph", run_dir=tmp_path, progress=False, figures=False)
    assert [r["compile"] for r in run.metrics] == ["graph", "graph"]
    eager = train(dataset="digits", limit=200, epochs=2, batch_size=32, device="cuda",
                  compile="eager", progress=False, figures=False)
    assert run.metrics[-1]["test_elbo"] == pytest.approx(eager.metrics[-1]["test_elbo"], abs=3)
    resumed = train(run_dir=tmp_path, resume=True, epochs=3, progress=False, figures=False)
    assert resumed.metrics[-1]["epoch"] == 3
    cpu = train(run_dir=tmp_path, resume=True, epochs=4, device="cpu", compile="eager",
                progress=False, figures=False)
    assert cpu.metrics[-1]["compile"] == "eager"
