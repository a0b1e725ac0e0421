"""Data-parallel training: two Gloo processes under torchrun against one process.

The auto-encoder (``--model ae``) draws no latent noise, so one process and two processes that
take the same global batches must reach the same parameters, up to float rounding of the
gradient sum; a VAE run checks that noise, metrics and resume work across process counts.
"""

import json
import os
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrovae import runs
from pyrovae.errors import PyrovaeError
from pyrovae.training.distributed import Context, setup
from pyrovae.training.loop import train
from tests.conftest import REPO

# 110 examples, global batches of 25 (shards of 13 and 12), a last partial batch of 10
AE = ["--dataset", "digits", "--limit", "110", "--model", "ae", "--batch-size", "25",
      "--hidden", "16", "--z-dim", "3", "--lr", "0.01", "--seed", "3"]
VAE = ["--dataset", "digits", "--limit", "110", "--batch-size", "25", "--hidden", "16",
       "--z-dim", "3", "--seed", "4"]


def config(args: list[str]) -> dict:
    keys = [a[2:].replace("-", "_") for a in args[::2]]
    values = [int(v) if v.isdigit() else v for v in args[1::2]]
    out = dict(zip(keys, values, strict=True))
    out["hidden"] = [out["hidden"]]
    out["lr"] = float(out.get("lr", 1e-3))
    return out


def torchrun(cwd, *args: str, nproc: int = 2, script: str | None = None) -> subprocess.CompletedProcess:
    """``pyrovae train ARGS`` (or ``python SCRIPT ARGS``) in ``nproc`` processes under torchrun."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    what = [script, *args] if script else ["-m", "pyrovae", "train", "--no-progress", *args]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", *what]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def params(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / runs.CHECKPOINT, weights_only=True)["state"]["module"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k


def one_process(run_dir, args: list[str], epochs: int, **kw):
    return train(config(args), run_dir=run_dir, epochs=epochs, progress=False, figures=False, **kw)


def test_two_processes_match_one_and_resume_across_counts(tmp_path, single_thread):
    ref = {e: params(one_process(tmp_path / f"one-{e}", AE, e).run_dir) for e in (1, 2, 3)}

    out = torchrun(tmp_path, *AE, "--epochs", "1", "--out", "two")
    two = tmp_path / "two"
    assert_same(params(two), ref[1])
    # rank 0 alone writes: one run folder, one metrics row, and a report printed once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-1", "one-2", "one-3", "two"]
    assert [r["world_size"] for r in runs.read_metrics(two)] == [2]
    assert out.stdout.count("run folder:") == 1

    one_process(two, AE, 2, resume=True)  # a two-process checkpoint, resumed in one process
    assert_same(params(two), ref[2])
    torchrun(tmp_path, "--resume", "two", "--epochs", "3")  # and a one-process one in two
    assert_same(params(two), ref[3])
    rows = runs.read_metrics(two)
    assert [(r["epoch"], r["world_size"]) for r in rows] == [(1, 2), (2, 1), (3, 2)]
    one = runs.read_metrics(tmp_path / "one-3")
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in one], rel=1e-5)


def test_a_vae_trains_in_two_processes(tmp_path, single_thread):
    torchrun(tmp_path, *VAE, "--epochs", "2", "--out", "vae", "--kl-schedule", "linear")
    rows = runs.read_metrics(tmp_path / "vae")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["kl_schedule"] == "linear"
    assert (tmp_path / "vae" / "figures").is_dir()
    resumed = one_process(tmp_path / "vae", VAE, 3, resume=True)
    assert resumed.metrics[-1]["epoch"] == 3 and resumed.world_size == 1


class UserAE(nn.Module):
    """A user's deterministic auto-encoder (a point-mass guide, so no sampling noise) with a
    learned observation scale held as a ``pyro.param``: one process and two must agree."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3))
        self.dec = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 64))

    def model(self, x):
        pyro.module("dec", self.dec)
        log_scale = pyro.param("log_scale", lambda: torch.zeros(()))
        with pyro.plate("rows", x.shape[0]):
            code = pyro.sample("code", dist.Normal(x.new_zeros(()), 1.0).expand([3]).to_event(1))
            pyro.sample("obs", dist.Normal(self.dec(code), log_scale.exp()).to_event(1),
                        obs=x.flatten(1))

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("code", dist.Delta(self.enc(x.flatten(1))).to_event(1))


USER = dict(dataset="digits", limit=110, batch_size=25, lr=0.01, seed=3, progress=False,
            figures=False)
USER_SCRIPT = """
import os
import sys
import pyro
from pyrovae import train
from tests.test_distributed import USER, UserAE
pyro.set_rng_seed(int(os.environ["RANK"]))  # rank 1 starts elsewhere: the broadcast must fix it
train(model=UserAE(), run_dir=sys.argv[1], epochs=int(sys.argv[2]), **USER)
"""


def user_state(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / runs.CHECKPOINT, weights_only=True)["state"]
    assert set(state["params"]) == {"log_scale"}
    return {**state["module"], **state["params"]}


def test_a_user_model_in_two_processes_matches_one(tmp_path, single_thread):
    pyro.set_rng_seed(0)
    one = train(model=UserAE(), run_dir=tmp_path / "one", epochs=2, **USER)
    script = tmp_path / "user_train.py"
    script.write_text(USER_SCRIPT)
    torchrun(tmp_path, str(tmp_path / "two"), "2", script=str(script))
    two = tmp_path / "two"
    assert_same(user_state(two), user_state(tmp_path / "one"))
    rows = runs.read_metrics(two)
    assert [r["world_size"] for r in rows] == [2, 2]
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in one.metrics],
                                                            rel=1e-5)


def test_shards_cover_the_global_batch():
    batch = torch.arange(25)
    parts = [Context(rank=r, world_size=2).shard(batch) for r in range(2)]
    assert [len(p) for p in parts] == [13, 12]
    assert torch.equal(torch.cat(parts), batch)
    assert Context().shard(batch) is batch
    assert len(Context(rank=3, world_size=4).shard(torch.arange(2))) == 0  # a rank may get none
    assert Context(rank=1, world_size=2).rank_seed(7) != Context().rank_seed(7) == 7


def test_a_half_set_environment_names_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(PyrovaeError, match="torchrun --nproc-per-node"):
        setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(PyrovaeError, match="WORLD_SIZE='two' is not a whole number"):
        setup("cpu")


def test_gradient_sum_gathers_fresh_gradients_and_writes_them_back(tmp_path):
    """The copy path (a CUDA graph's backward makes its own .grad tensors), in a one-rank Gloo
    group posing as two ranks: the sum over one rank must leave every value as it was."""
    import torch.distributed as dist

    from pyrovae.training.distributed import GradientSum

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        net = torch.nn.Linear(3, 2)
        grad_sum = GradientSum(Context(rank=0, world_size=2), net.parameters())
        assert net.weight.grad is grad_sum.views[0]  # gradients live in the flat buffer
        net(torch.ones(4, 3)).sum().backward()  # accumulates in place, into the buffer
        want = [p.grad.clone() for p in net.parameters()]
        assert float(grad_sum(torch.tensor(2.5))) == 2.5
        assert all(torch.equal(p.grad, w) for p, w in zip(net.parameters(), want, strict=True))

        net.weight.grad, net.bias.grad = torch.full((2, 3), 7.0), None  # fresh tensors, one missing
        grad_sum(torch.tensor(1.0))
        assert torch.equal(net.weight.grad, torch.full((2, 3), 7.0))
        assert torch.equal(net.bias.grad, torch.zeros(2))
        grad_sum.zero()
        assert net.weight.grad is grad_sum.views[0] and not net.weight.grad.any()

        # the eager step returns the summed loss, which the buffer's zeroing must not clear
        from pyrovae.training.steps import EagerStep

        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        step = EagerStep(lambda x: net(x).sum(), optimizer, grad_sum)
        x = torch.ones(4, 3)
        want = float(net(x).sum().detach())
        assert float(step((x,))) == pytest.approx(want)
    finally:
        dist.destroy_process_group()


def test_each_rank_takes_its_own_gpu():
    from pyrovae.training.distributed import device_name

    ctx = Context(rank=1, world_size=2, local_rank=1)
    assert device_name(ctx, "cuda") == "cuda:1"
    assert device_name(ctx, "cpu") == "cpu"
    assert device_name(Context(), "cuda:3") == "cuda:3"
    with pytest.raises(PyrovaeError, match="pass --device cuda"):
        device_name(ctx, "cuda:0")
