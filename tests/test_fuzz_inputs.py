"""Fuzz the command line: every numeric option of every command, malformed specs, bad data files.

Each case runs through ``main([...])`` and must end in a clear one-line ``error: ...`` (exit 2) or,
for values that are legitimately valid, succeed (exit 0); never a traceback, never a silently
accepted bad value. Options are read from the parser, so a new option is fuzzed too (and must say
here which generated values it accepts). A training option shared with ``train`` gets the full
list there and two values in the other commands (the same config checks read it). ``sweep``,
``baselines`` and ``compare`` stop where their first run would start its first step (data loaded,
model, estimator and schedule built); the other commands run for real at tiny size.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal

import numpy as np
import pytest

from pyrovae.cli.main import build_parser, main

BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e308", "1e-300", "1e9", "1000000000", "abc", "",
               "1.5", "9" * 40]
TINY = ["--dataset", "digits", "--epochs", "1", "--limit", "16", "--hidden", "8", "--z-dim", "2"]
STOPPED = ("sweep", "baselines", "compare")  # stopped where their first run starts its first step
CASE_SECONDS = 20  # a case that takes longer hangs (e.g. a huge loop count accepted)

# (command, option) -> the generated values it accepts; every other value must be an error.
HUGE = {"1000000000", "9" * 40}  # for a batch size or a limit: all there is
_TRAIN_VALID = {"--batch-size": HUGE, "--seed": {"0", "1000000000"}, "--limit": HUGE,
                "--lr": {"1e-300", "1.5"}, "--clip-norm": {"1e-300", "1.5"},
                "--val-fraction": {"1e-300"}}  # a tiny fraction still holds out MIN_HELD_OUT images
VALID: dict[tuple[str, str], set[str]] = {
    **{(c, o): v for c in ("train", "sweep", "baselines", "compare") for o, v in _TRAIN_VALID.items()},
    ("train", "--beta"): {"0", "1e-300", "1.5"},
    ("sweep", "--betas"): {"0", "1e-300", "1.5", ""},  # an empty list: schedules only
    ("sweep", "--schedule-beta"): {"0", "1e-300", "1.5"},
    ("evaluate", "--limit"): HUGE, ("evaluate", "--batch-size"): HUGE,
    ("evaluate", "--seed"): {"0", "1000000000"},
    ("sample", "--seed"): {"0", "1000000000"},
    ("views", "--index"): {"0"}, ("views", "--span"): {"1e-300", "1.5"},
    ("gradients", "--batch-size"): HUGE, ("gradients", "--seed"): {"0", "1000000000"},
    ("compare", "--seconds"): {"1e-300", "1.5"}, ("compare", "--eval-n"): HUGE,
    ("compare", "--grad-batch"): HUGE,
    ("toy", "--sigma"): {"1.5"}, ("toy", "--sigma-init"): {"1.5"},
    ("toy", "--lr"): {"1e-300", "1.5"}, ("toy", "--seed"): {"0", "1000000000"},
    ("toy", "--log-every"): HUGE,
}
def _base(command: str, run: str, tmp: str) -> list[str]:
    """Options that make ``command`` run at tiny size (the fuzzed option comes after, and wins)."""
    return {
        "train": ["train", *TINY, "--no-progress", "--out", f"{tmp}/run"],
        "evaluate": ["evaluate", run, "--iwae-k", "2", "--limit", "8"],
        "sample": ["sample", run, "--n", "4", "--out", f"{tmp}/s.png"],
        "views": ["views", run, "--pairs", "1", "--steps", "2"],
        "gradients": ["gradients", run, "--estimators", "trace", "--draws", "2", "--batch-size", "4",
                      "--out", f"{tmp}/g"],
        "sweep": ["sweep", *TINY, "--betas", "1", "--schedule", "constant", "--out", f"{tmp}/sw"],
        "baselines": ["baselines", *TINY, "--models", "vae", "--samplers", "prior", "--n-samples",
                      "4", "--out", f"{tmp}/b"],
        "compare": ["compare", *TINY[:2], *TINY[4:], "--estimators", "trace", "--epochs", "1",
                    "--iwae-k", "2", "--eval-n", "4", "--curve-k", "2", "--draws", "2",
                    "--grad-batch", "4", "--snr-k", "1", "--out", f"{tmp}/c"],
        "toy": ["toy", "--n", "20", "--steps", "2", "--estimator", "enum", "--out", f"{tmp}/t"],
    }[command]


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _numeric_options() -> list[tuple[str, str]]:
    """(command, flag) for every option that converts its text (int, float, sizes...)."""
    return [(name, action.option_strings[0]) for name, parser in _commands().items()
            for action in parser._actions if action.option_strings and action.type is not None]


def _offering(flag: str) -> list[str]:
    return [name for name, parser in _commands().items()
            if any(flag in a.option_strings for a in parser._actions)]


def _offering_flags(command: str) -> set[str]:
    return {s for a in _commands()[command]._actions for s in a.option_strings}


class Accepted(Exception):
    """Raised where a stopped command would start its first step: its options were accepted."""


class Hung(Exception):
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--limit", "40", "--hidden",
                 "8", "--z-dim", "2", "--no-progress", "--out", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def memory_cap():
    """At most 6 GiB more address space, so a case that asks for too much memory fails with an
    allocation error instead of taking the machine down."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    cap = used + 6 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard),
                                            hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def _time_limit(seconds: int):
    def hung(*_):
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _run(argv: list[str], capsys, monkeypatch) -> tuple[int | str, str]:
    """Exit code (or "accepted" for a stopped command) and everything printed."""
    if argv[0] in STOPPED:
        import pyrovae.training.loop as loop

        def stop(*args, **kwargs):
            raise Accepted

        monkeypatch.setattr(loop, "fit", stop)
    try:
        with _time_limit(CASE_SECONDS):
            code: int | str = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    except Accepted:
        code = "accepted"
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _check(argv: list[str], outcome: str, capsys, monkeypatch) -> None:
    """``outcome``: "error", "valid" or "either"."""
    code, printed = _run(argv, capsys, monkeypatch)
    assert "Traceback" not in printed, printed
    if code in (0, "accepted"):
        assert outcome in ("valid", "either"), f"silently accepted: {argv}"
        return
    lines = printed.strip().splitlines()
    assert code == 2 and lines and lines[-1].startswith("pyrovae") and "error: " in lines[-1], printed
    assert sum("error:" in line for line in lines) == 1, printed
    assert outcome in ("error", "either"), f"a valid value refused: {argv}: {lines[-1]}"


def _values(command: str, flag: str) -> list[str]:
    """Every generated value; a training option that a stopped command shares with ``train``
    (checked by the same code) gets two, to show the command checks it at all."""
    shared = command in STOPPED and flag in _offering_flags("train")
    return ["nan", "-1"] if shared else BAD_NUMBERS


NUMERIC_CASES = [(c, o, v) for c, o in _numeric_options() for v in _values(c, o)]


@pytest.mark.parametrize("command,flag,value", NUMERIC_CASES,
                         ids=[f"{c}{o}={v[:12]}" for c, o, v in NUMERIC_CASES])
def test_bad_numbers(command, flag, value, run_dir, tmp_path, capsys, monkeypatch, memory_cap,
                     single_thread):
    argv = [*_base(command, run_dir, str(tmp_path)), flag, value]
    if command == "compare" and flag == "--seconds":  # the other budget: drop --epochs 1
        i = argv.index("--epochs")
        del argv[i:i + 2]
    outcome = "valid" if value in VALID.get((command, flag), ()) else "error"
    _check(argv, outcome, capsys, monkeypatch)


# flag -> malformed values (empty arguments, repeated and unknown keys, huge and negative numbers)
BAD_SPECS = {
    "--estimator": ["", "iwae:", "iwae:0", "iwae:-3", "iwae:1e8", "iwae:" + "9" * 40, "iwae:2,",
                    "iwae:2,3", "renyi:", "renyi:nan,2", "renyi:1,2", "renyi:,2", "trace:3",
                    "nosuch", "tail-adaptive:1", "tail-adaptive:5,2", "dreg:abc", ":"],
    "--kl-schedule": ["", "linear:", "linear:steps=1,steps=2", "linear:steps=-5", "linear:steps=1.5",
                      "linear:steps=1e300", "linear:epochs=1e-300", "linear:foo=1", "linear:steps",
                      "linear:steps=", "linear:,steps=3", "cyclical:cycles=1e300",
                      "cyclical:cycles=0.5", "cyclical:ratio=0", "cyclical:ratio=nan",
                      "sigmoid:k=1e-300", "sigmoid:k=1e300", "sigmoid:k=0", "sigmoid:k=inf",
                      "sigmoid:steps=2,epochs=1", "constant:", "constant:steps=2", "warmup"],
    "--noise": ["", "gaussian:", "gaussian:nan", "gaussian:-1", "gaussian:1e308", "mask:1",
                "mask:-0.1", "mask:0.5,0.5", "salt:0.1"],
    "--hidden": ["", ",", "0", "-5", "8,,8", "8,-1", "1e3", "9" * 40, "99999999,99999999"],
    "--model": ["", ":", "nosuch", "vae:", "vamp:components=0", "vamp:components=-1",
                "vamp:components=1,components=2", "vamp:nosuch=1", "vamp:components=" + "9" * 40],
    "--likelihood": ["", "gauss", "bernoulli:1"],
    "--lr-schedule": ["", "step:", "step:every=0", "step:every=1.5", "step:gamma=2", "step:gamma=nan",
                      "step:every=1,every=2", "cosine:x=1", "exponential:gamma=0", "nosuch", ":"],
    "--net": ["", "resnet"],
    "--device": ["", "gpu", "cuda:-1", "cuda:99", "cpu:0"],
    "--dataset": ["", "nosuch", "npy:", "npz:/nonexistent/file.npz", "idx:/nonexistent"],
    "--estimators": ["", ",", "trace,trace", "iwae:", "iwae:0", "iwae:" + "9" * 40],
    "--schedule": ["", "linear:steps=1,steps=2", "cyclical:cycles=1e300"],
    "--models": ["", "nosuch"],
    "--samplers": ["nosuch"],
    "--sampler": ["", "nosuch"],
    "--snr-k": ["", "0", "-1", "9" * 40],
}
# (flag, value) pairs that are legitimately valid
VALID_SPECS = {("--models", ""), ("--samplers", "")}
SPEC_CASES = [(c, f, v) for f, values in BAD_SPECS.items() for c in _offering(f) for v in values]


@pytest.mark.parametrize("command,flag,value", SPEC_CASES,
                         ids=[f"{c}{f}={v[:16]}" for c, f, v in SPEC_CASES])
def test_malformed_specs(command, flag, value, run_dir, tmp_path, capsys, monkeypatch, memory_cap,
                         single_thread):
    argv = [*_base(command, run_dir, str(tmp_path)), flag, value]
    if flag == "--noise" and "--model" in _offering_flags(command):
        argv += ["--model", "dae"]
    outcome = "valid" if (flag, value) in VALID_SPECS else "error"
    _check(argv, outcome, capsys, monkeypatch)


def _bad_arrays() -> dict[str, dict[str, np.ndarray]]:
    """name -> the arrays of one data file (one array: .npy; several: .npz)."""
    rng = np.random.default_rng(0)
    good = rng.random((40, 8, 8), dtype=np.float32)
    nan = good.copy()
    nan[3, 2, 2] = np.nan
    return {
        "flat": {"x": rng.random((40, 64), dtype=np.float32)},
        "5d": {"x": rng.random((4, 1, 1, 8, 8), dtype=np.float32)},
        "1d": {"x": rng.random(40, dtype=np.float32)},
        "nan": {"x": nan},
        "above-one": {"x": good * 3},
        "negative": {"x": good - 0.5},
        "zero-images": {"x": np.zeros((0, 8, 8), np.float32)},
        "one-image": {"x": good[:1]},
        "constant": {"x": np.full((40, 8, 8), 0.5, np.float32)},
        "int-out-of-range": {"x": rng.integers(-300, 300, (40, 8, 8)).astype(np.int32)},
        "bool": {"x": good > 0.5},
        "complex": {"x": good.astype(np.complex64)},
        "strings": {"x": np.array([["a"] * 8] * 8)},
        "empty-dim": {"x": np.zeros((40, 0, 8), np.float32)},
        "npz-no-x": {"images": good},
        "npz-bad-labels": {"x": good, "y": np.arange(39)},
        "npz-float-labels": {"x": good, "y": rng.random(40)},
        "npz-test-shape": {"x": good, "x_test": rng.random((10, 7, 7), dtype=np.float32)},
        "npz-empty-test": {"x": good, "x_test": np.zeros((0, 8, 8), np.float32)},
    }


@pytest.mark.parametrize("name", list(_bad_arrays()))
def test_bad_data_files(name, tmp_path, capsys, monkeypatch, memory_cap, single_thread):
    arrays = _bad_arrays()[name]
    if len(arrays) == 1 and "x" in arrays and not name.startswith("npz"):
        path = tmp_path / f"{name}.npy"
        np.save(path, arrays["x"], allow_pickle=False)
        spec = f"npy:{path}"
    else:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        spec = f"npz:{path}"
    argv = ["train", "--dataset", spec, "--epochs", "1", "--hidden", "8", "--z-dim", "2",
            "--no-progress", "--out", str(tmp_path / "run")]
    _check(argv, "either", capsys, monkeypatch)  # clear error or training: never a traceback


def test_an_object_array_file_is_refused_without_unpickling(tmp_path, capsys, monkeypatch):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    argv = ["train", "--dataset", f"npy:{path}", "--epochs", "1", "--no-progress", "--out",
            str(tmp_path / "run")]
    _check(argv, "error", capsys, monkeypatch)
