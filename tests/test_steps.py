"""``--compile {eager,graph,auto}``: choosing the step, and a captured step that never syncs.

On the CPU the captured part of the step (loss and backward) runs under a guard that fails on
any host read of a tensor; on a GPU (skipped here without one) the real capture runs under
``torch.cuda.set_sync_debug_mode("error")`` and is compared with the eager loss.
"""

import contextlib

import pytest
import torch

import pyrovae.training as training
from pyrovae import runs, steps
from pyrovae.cli import main
from pyrovae.distributed import Context, GradientSum
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation import elbo_terms, log_likelihood
from pyrovae.objectives import make_elbo
from pyrovae.static_elbo import CAPTURABLE, StaticELBO
from pyrovae.steps import GraphStep, choose
from pyrovae.training import TrainingDiverged, train
from pyrovae.vae import VAE
from tests.conftest import HostSync

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU, GPU = torch.device("cpu"), torch.device("cuda")
SPECS = ["trace", "meanfield", "stl", "iwae:3", "renyi:0.5,3", "dreg:3"]


def test_every_capture_ready_estimator_is_exercised():
    assert {s.split(":")[0] for s in SPECS} == set(CAPTURABLE)


def test_graph_on_the_cpu_is_one_clear_error():
    with pytest.raises(PyrovaeError, match="--compile graph: CUDA graphs need a CUDA device.*"
                                           "use --compile eager"):
        choose("graph", CPU, "trace", 1)


def test_auto_falls_back_to_eager_and_says_why():
    assert choose("auto", CPU, "trace", 1) == ("eager", "CUDA graphs need a CUDA device, and "
                                                        "this run trains on cpu")
    mode, why = choose("auto", GPU, "score", 1)  # the device object alone: no GPU needed
    assert mode == "eager" and "score" in why
    assert choose("auto", GPU, "dreg:5", 1) == ("graph", None)
    assert choose("graph", GPU, "trace", 4) == ("graph", None)
    assert choose("eager", GPU, "trace", 1) == ("eager", None)
    with pytest.raises(PyrovaeError, match="--compile graph: .*jit"):
        choose("graph", GPU, "jit", 1)
    with pytest.raises(PyrovaeError, match="unknown --compile 'fast'"):
        choose("fast", CPU, "trace", 1)


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


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("kind", ["vae", "dae", "gaussian-conv", "continuous-bernoulli", "laplace"])
def test_the_captured_part_of_the_step_reads_nothing_on_the_host(spec, kind, forbid_host_sync):
    if kind == "gaussian-conv":
        vae = VAE((1, 8, 8), z_dim=3, hidden=[8], net="conv", likelihood="gaussian")
        x = torch.rand(5, 1, 8, 8)
    elif kind in ("continuous-bernoulli", "laplace"):
        scale = 0.2 if kind == "laplace" else None
        vae = VAE((1, 8, 8), z_dim=3, hidden=[8], likelihood=kind, obs_scale=scale)
        x = torch.rand(5, 1, 8, 8)
    else:
        vae = VAE((1, 8, 8), z_dim=3, hidden=[8], model=kind)
        x = torch.bernoulli(torch.rand(5, 1, 8, 8))
    loss_fn = StaticELBO(spec)
    step = GraphStep(lambda x, beta: loss_fn(vae.model, vae.guide, x, beta),
                     torch.optim.Adam(vae.parameters()), GradientSum(Context(), vae.parameters()))
    beta = torch.tensor(0.5)
    with forbid_host_sync():
        loss = step.forward_backward(x, beta)
        beta.fill_(0.0)  # a schedule's update, in place
        step.forward_backward(x, beta)
    assert loss.shape == () and torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.decoder.parameters())


def test_the_guard_catches_pyros_host_reads(forbid_host_sync):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[8])
    x = torch.bernoulli(torch.rand(5, 1, 8, 8))
    with forbid_host_sync(), pytest.raises(HostSync, match="host synchronisation"):
        make_elbo("trace").loss_and_grads(vae.model, vae.guide, x)  # Pyro reads the loss


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


SMALL = dict(dataset="digits", epochs=2, batch_size=25, hidden=[16], z_dim=3, seed=2,
             kl_schedule="linear", progress=False, figures=False)


def test_the_graph_loop_drops_partial_batches_and_replays(tmp_path, simulated, single_thread):
    run = train(limit=110, run_dir=tmp_path, **SMALL)  # 110 = 4 full batches of 25, and 10
    (sim,) = simulated
    assert (sim.captures, sim.replays) == (2, 2 * (8 - steps.WARMUP_STEPS))
    assert [(r["step"], r["compile"]) for r in run.metrics] == [(4, "graph"), (8, "graph")]
    assert run.metrics[-1]["train_loss"] < run.metrics[0]["train_loss"]


def test_the_graph_loop_trains_like_the_eager_one_and_resumes_eagerly(tmp_path, simulated,
                                                                      monkeypatch, single_thread):
    # 100 examples in batches of 25: both loops take the same batches, beta changes every step
    graph = train(limit=100, run_dir=tmp_path / "graph", **SMALL)
    monkeypatch.undo()
    eager = train(limit=100, run_dir=tmp_path / "eager", **SMALL)

    def same(a, b):
        for p, q in zip(a.vae.parameters(), b.vae.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)
        assert a.metrics[-1]["test_elbo"] == pytest.approx(b.metrics[-1]["test_elbo"], rel=1e-5)

    same(graph, eager)
    kw = dict(resume=True, epochs=3, progress=False, figures=False)
    resumed = train(run_dir=tmp_path / "graph", **kw)
    assert [r["compile"] for r in resumed.metrics] == ["graph", "graph", "eager"]
    same(resumed, train(run_dir=tmp_path / "eager", **kw))


def test_a_nan_in_the_graph_loop_is_caught_at_the_next_check(tmp_path, simulated, monkeypatch,
                                                             single_thread):
    real = training.StaticELBO

    class Poisoned(real):
        calls = 0

        def __call__(self, *args, **kwargs):
            Poisoned.calls += 1
            loss = super().__call__(*args, **kwargs)
            return loss * float("nan") if Poisoned.calls >= 5 else loss  # from step 5, epoch 2

    monkeypatch.setattr(training, "StaticELBO", Poisoned)
    monkeypatch.setattr(training, "CHECK_EVERY", 2)
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 2, step 6.*epoch 1\) is intact"):
        train(limit=100, run_dir=tmp_path, **{**SMALL, "epochs": 3})
    assert torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)["epoch"] == 1


@cuda
def test_graph_step_trains_without_syncs_and_matches_eager_on_cuda(tmp_path):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16]).cuda()
    loss_fn = StaticELBO("trace")
    x = torch.bernoulli(torch.rand(32, 1, 8, 8, device="cuda"))
    beta = torch.ones((), device="cuda")
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, capturable=True)
    step = GraphStep(lambda x, b: loss_fn(vae.model, vae.guide, x, b), optimizer,
                     GradientSum(Context(), vae.parameters()))
    for _ in range(4):  # warm-up steps, then the capture
        step(x, beta)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            beta.fill_(0.5)
            loss = step(x, beta)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)

    # the same draws give the same loss: a captured loss against the eager one
    static_x = x.clone()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        loss_fn(vae.model, vae.guide, static_x, beta)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g), torch.no_grad():
        captured = loss_fn(vae.model, vae.guide, static_x, beta)
    torch.cuda.manual_seed(11)
    with torch.no_grad():
        eager = loss_fn(vae.model, vae.guide, x, beta)
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


def test_an_unknown_compile_mode_is_refused_before_training(tmp_path):
    with pytest.raises(PyrovaeError, match="--compile must be eager, graph or auto, got 'fast'"):
        train(dataset="digits", limit=50, epochs=1, compile="fast", run_dir=tmp_path)
    assert not (tmp_path / runs.CHECKPOINT).exists()


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
