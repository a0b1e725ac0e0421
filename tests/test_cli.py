"""The command line end to end at tiny size, and its one-line errors."""

import json
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.cli import main

TINY = ["--dataset", "digits", "--epochs", "2", "--limit", "200", "--hidden", "32", "--z-dim",
        "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out), "--seed", "3"]) == 0
    return out


def test_train_writes_the_run_folder(run_dir, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == "digits" and config["z_dim"] == 2 and config["seed"] == 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == [
        "latents.png", "losses.png", "reconstructions.png", "samples.png"]
    torch.load(run_dir / "checkpoint.pt", weights_only=True)


def test_evaluate_prints_a_table_and_writes_eval_json(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--iwae-k", "20"]) == 0
    out = capsys.readouterr().out
    assert "log p(x), IWAE K=20" in out and "ELBO" in out
    result = json.loads((run_dir / "eval-K20.json").read_text())  # one file per K
    assert result["iwae_k"] == 20 and result["log_px"] >= result["elbo"] - 0.1
    assert result["seed"] == 0 and result["limit"] is None


def test_sample_writes_a_png(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "9", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_from_the_cli(run_dir):
    assert main(["train", "--resume", str(run_dir), "--epochs", "3", "--no-progress"]) == 0
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("argv,match", [
    (["train", "--dataset", "cifar"], "unknown data set 'cifar'"),
    (["train", "--hidden", "a,b"], "expected sizes like 400"),
    (["train", "--binarize", "maybe"], "invalid choice"),
    (["train", "--epochs", "0", "--dataset", "digits"], "--epochs must be a whole number"),
    (["evaluate", "/nonexistent/run"], "no checkpoint at"),
    (["sample", "/nonexistent/run"], "no checkpoint at"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, match, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_python_dash_m_and_help():
    done = subprocess.run([sys.executable, "-m", "pyrovae", "train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for flag in ("--dataset", "--data-dir", "--binarize", "--likelihood", "--net", "--hidden",
                 "--z-dim", "--epochs", "--batch-size", "--lr", "--seed", "--device", "--out",
                 "--resume"):
        assert flag in done.stdout


class TinyUserVAE(nn.Module):
    """A user's model: the command line cannot rebuild it, so it must say so in one line."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(64, 4), nn.Linear(2, 64)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x.flatten(1))

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.enc(x.flatten(1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_user_models_run_is_refused_by_the_commands_in_one_line(tmp_path, capsys, digits):
    run = tmp_path / "user"
    pyrovae.train(model=TinyUserVAE(), data=digits.subset(64, 16), epochs=1, binarize="dynamic",
                  run_dir=run, progress=False, figures=False)
    for argv in (["evaluate", str(run)], ["sample", str(run)],
                 ["train", "--resume", str(run), "--epochs", "2", "--no-progress"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "user model" in err and "TinyUserVAE" in err, err


class LabelledImageVAE(nn.Module):
    """A user's conditional model (labels as a second input) that observes whole 1x8x8 images."""

    inputs = ("x", "y")

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(64 + 10, 4), nn.Linear(2 + 10, 64)

    @staticmethod
    def join(h, y):
        y = nn.functional.one_hot(y, 10).to(h.dtype)
        return torch.cat([h, y.expand(*h.shape[:-1], 10)], -1)

    def model(self, x, y):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([2]).to_event(1))
            logits = self.dec(self.join(z, y))
            pyro.sample("x", dist.Bernoulli(logits=logits.unflatten(-1, (1, 8, 8))).to_event(3), obs=x)

    def guide(self, x, y):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.enc(self.join(x.flatten(1), y)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_user_model_through_the_commands(tmp_path, capsys):
    run, spec = tmp_path / "user", "tests.test_cli:LabelledImageVAE"
    base = ["--dataset", "digits", "--limit", "100", "--binarize", "dynamic", "--no-progress"]
    assert main(["train", "--model", spec, *base, "--epochs", "1", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "user:tests.test_cli.LabelledImageVAE"
    assert main(["train", "--resume", str(run), "--model", spec, "--epochs", "2",
                 "--no-progress"]) == 0
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--model", spec, "--iwae-k", "5"]) == 0, capsys.readouterr().err
    result = json.loads((run / "eval-K5.json").read_text())
    assert result["iwae_k"] == 5 and result["log_px"] >= result["elbo"] - 0.1
    out = tmp_path / "grid.png"
    assert main(["sample", str(run), "--model", spec, "--n", "9", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(run), "--model", "tests.test_cli:NoSuchClass"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NoSuchClass" in err, err
