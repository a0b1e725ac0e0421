"""Options that used to give tracebacks, run out of memory, overflow, or be accepted silently."""

from __future__ import annotations

import math

import pytest

from pyrovae import memory
from pyrovae.cli import main
from pyrovae.errors import PyrovaeError
from pyrovae.infer.beta import KLWeight
from pyrovae.infer.registry import make_elbo
from pyrovae.infer.schedules import parse_schedule
from pyrovae.training.config import TrainConfig, resolve

TINY = ["--dataset", "digits", "--epochs", "1", "--limit", "16", "--hidden", "8", "--z-dim", "2",
        "--no-progress"]


def _error(argv: list[str], capsys) -> str:
    """The one-line message of a command that must fail with exit status 2."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train", *TINY, "--limit", "40", "--out", str(out)]) == 0
    return out


@pytest.fixture
def one_gib(monkeypatch):
    """Pretend 1 GiB is free, so the memory checks do not depend on this machine."""
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 2**30)


# 1. sizes that cannot fit: a message naming the option, before anything is allocated

@pytest.mark.parametrize("option,value,culprit", [
    ("--hidden", "1000000000", "--hidden"),
    ("--z-dim", "1000000000", "--z-dim"),
    ("--particles", "100000", "--particles"),
    ("--estimator", "iwae:100000", "--estimator"),
])
def test_sizes_that_cannot_fit_name_the_option(option, value, culprit, tmp_path, capsys, one_gib,
                                               single_thread):
    err = _error(["train", *TINY, option, value, "--out", str(tmp_path / "r")], capsys)
    assert "GiB available" in err and err.endswith(f"lower {culprit}"), err
    assert not (tmp_path / "r").exists()


def test_the_training_estimate_counts_parameters_and_activations():
    # encoder 784 -> 400 -> (loc, scale) of 16, decoder 16 -> 400 -> 784, with biases but the heads'
    params = 784 * 400 + 400 + 400 * 32 + 16 * 400 + 400 + 400 * 784 + 784
    # the encoder's layers once per example, the decoder's (and the likelihood's 2 per pixel) per
    # example and particle
    acts = 100 * (784 + 400 + 32) + 100 * 3 * (16 + 400 + 2 * 784)
    got = memory.training_bytes(784, [400], 16, batch=100, particles=3)
    assert got == params * 4 * 4 + acts * 4 * 3


def test_check_memory_takes_the_particles_of_the_estimator_and_caps_the_batch(one_gib):
    config = resolve(TrainConfig(dataset="digits", hidden=[8], z_dim=2, estimator="iwae:100000",
                                 limit=2))
    memory.check_memory(config, (1, 8, 8), n_train=1)  # one example: 100,000 particles fit
    with pytest.raises(PyrovaeError, match="lower estimator$"):
        memory.check_memory(config, (1, 8, 8), n_train=1000)


def test_huge_particle_counts_are_refused_as_typos():
    with pytest.raises(PyrovaeError, match="K .* at most 1,000,000"):
        make_elbo("iwae:2000000")
    with pytest.raises(PyrovaeError, match="at most 1,000,000"):
        resolve(TrainConfig(dataset="digits", particles=2_000_000))
    with pytest.raises(PyrovaeError, match="epochs must be at most"):
        resolve(TrainConfig(dataset="digits", epochs=10**22))


def test_sample_refuses_a_request_that_cannot_fit(monkeypatch, capsys, run_dir, tmp_path):
    from pyrovae.evaluation.generate import sample
    from pyrovae.training.loop import load_run

    model = load_run(run_dir).model
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 2**20)
    with pytest.raises(PyrovaeError, match="needs about .* lower n$"):
        sample(model, 100_000)
    assert sample(model, 4).shape == (4, 1, 8, 8)  # a few fit
    err = _error(["sample", str(run_dir), "--n", "100000000", "--out", str(tmp_path / "s.png")], capsys)
    assert "--n must be at most 10,000" in err


# 2. overflow and silently accepted numbers and specs

def test_beta_is_bounded(tmp_path, capsys):
    err = _error(["train", *TINY, "--beta", "1e308", "--out", str(tmp_path / "r")], capsys)
    assert "--beta must be a finite number >= 0 and <= 1e+06" in err
    with pytest.raises(PyrovaeError, match="beta must be"):
        KLWeight(1e7)
    assert KLWeight(1e6).beta == 1e6


@pytest.mark.parametrize("spec,match", [
    ("linear:steps=1,steps=2", "gives steps twice"),
    ("linear:", "empty option list"),
    ("linear:,steps=3", "bad option ''"),
    ("linear:steps=", "bad option 'steps='"),
    ("", "empty KL schedule"),
    ("linear:steps=2.5", "steps must be a whole number"),
    ("linear:steps=1e300", "beta would never leave 0"),
    ("cyclical:cycles=1e300", "do not fit in the run's 100 steps"),
    ("sigmoid:k=1e-300", r"k > 0, from 1e-06"),
    ("sigmoid:k=1e300", r"to 1e\+06"),
])
def test_malformed_schedules_are_errors(spec, match):
    with pytest.raises(PyrovaeError, match=match):
        parse_schedule(spec, 1.0, total_steps=100)


def test_a_run_too_short_for_four_cycles_gets_one_per_step():
    assert parse_schedule("cyclical", 1.0, total_steps=2).cycles == 2
    assert parse_schedule("cyclical", 1.0, total_steps=400).cycles == 4


@pytest.mark.parametrize("k", [1e-6, 1e-3, 1.0, 10.0, 50.0, 1e3, 1e6])
def test_sigmoid_schedule_matches_the_logistic_formula_without_overflow(k):
    s = parse_schedule(f"sigmoid:steps=100,k={k}", 2.0, total_steps=200)

    def logistic(t):  # the textbook form through tanh: exact enough in float64 for k >= 1e-3
        return 0.5 * (1 + math.tanh(0.5 * k * (t - 0.5)))

    for step in (0, 1, 10, 37, 50, 63, 99, 100, 150):
        t = min(step / 100, 1.0)
        if k < 1e-3:  # a flat logistic rescaled is the straight line (the textbook form cancels)
            want = 2.0 * t
        else:
            want = 2.0 * (logistic(t) - logistic(0)) / (logistic(1) - logistic(0))
        tol = 1e-6 if k < 1e-3 else 1e-9
        assert s(step) == pytest.approx(want, rel=tol, abs=1e-12), (k, step)
        assert 0.0 <= s(step) <= 2.0


@pytest.mark.parametrize("spec,match", [
    ("iwae:", "empty argument list"),
    ("trace:", "empty argument list"),
    ("renyi: ", "empty argument list"),
])
def test_an_empty_estimator_argument_list_is_an_error(spec, match):
    with pytest.raises(PyrovaeError, match=match):
        make_elbo(spec)


def test_empty_and_gappy_options_are_errors(tmp_path, capsys):
    assert "expected sizes like 400" in _error(["train", *TINY, "--hidden", "8,,8"], capsys)
    assert "--dataset is empty" in _error(["train", *TINY, "--dataset", "", "--out",
                                           str(tmp_path / "r")], capsys)
    assert "--kl-schedule is empty" in _error(["train", *TINY, "--kl-schedule", "", "--out",
                                          str(tmp_path / "r")], capsys)
    assert "empty argument list" in _error(["train", *TINY, "--estimator", "iwae:", "--out",
                                            str(tmp_path / "r")], capsys)


def test_learning_rate_and_toy_ranges(tmp_path, capsys):
    assert "--lr must be at most 10" in _error(["train", *TINY, "--lr", "1e9"], capsys)
    toy = ["toy", "--n", "20", "--steps", "2", "--estimator", "enum", "--out", str(tmp_path / "t")]
    assert "--sigma must be a finite number >= 0.001" in _error([*toy, "--sigma", "1e-300"], capsys)
    assert "pass a positive --sigma-init" in _error([*toy, "--sigma-init", "-1"], capsys)
    assert "--p-init must be" in _error([*toy, "--p-init", "1e-300"], capsys)
    assert "--lr must be a number in (0, 10]" in _error([*toy, "--lr", "inf"], capsys)
    assert not (tmp_path / "t").exists()


# 4. obs_scale with a likelihood that has no scale

def test_obs_scale_with_the_bernoulli_likelihood_is_an_error(tmp_path, capsys):
    err = _error(["train", *TINY, "--obs-scale", "0.5", "--out", str(tmp_path / "r")], capsys)
    assert "--obs-scale applies to the gaussian and laplace likelihoods only" in err
    with pytest.raises(PyrovaeError, match="obs_scale applies to"):
        resolve(TrainConfig(dataset="digits", likelihood="continuous-bernoulli", obs_scale=0.1))
    assert resolve(TrainConfig(dataset="digits", likelihood="gaussian", obs_scale=0.1)).obs_scale == 0.1


# 3. paths

def test_sample_into_a_folder_writes_the_default_file_name(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "--n", "4", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "samples-3.png").read_bytes()[:4] == b"\x89PNG"


def test_commands_take_the_checkpoint_path_for_its_run(run_dir, tmp_path, capsys):
    ckpt = str(run_dir / "checkpoint.pt")
    assert main(["evaluate", ckpt, "--iwae-k", "2", "--limit", "4"]) == 0
    assert (run_dir / "eval-K2-n4-seed0.json").is_file()
    assert main(["sample", ckpt, "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert "is a file, not a run folder" in _error(["evaluate", str(other)], capsys)


def test_outputs_under_a_regular_file_name_the_file(run_dir, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    err = _error(["sample", str(run_dir), "--n", "4", "--out", str(blocker / "s.png")], capsys)
    assert f"{blocker} is a file, not a folder" in err
    err = _error(["gradients", str(run_dir), "--estimators", "trace", "--draws", "2", "--out",
                  str(blocker)], capsys)
    assert f"--out {blocker} is a file" in err
    err = _error(["train", *TINY, "--out", str(blocker / "run")], capsys)
    assert f"{blocker} is a file, not a folder" in err


# 5. --model of the commands that read a run, and built-in specs with options

def test_model_of_a_run_reading_command_must_be_module_class(run_dir, capsys):
    err = _error(["evaluate", str(run_dir), "--model", "nosuch", "--iwae-k", "2"], capsys)
    assert "give module:Class" in err


def test_a_built_in_model_spec_with_options_trains_from_the_cli(tmp_path, capsys, single_thread):
    out = tmp_path / "vamp"
    assert main(["train", *TINY, "--model", "vamp:components=3", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert (out / "checkpoint.pt").is_file()
