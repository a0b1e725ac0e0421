"""Run folders under stress: a second writer, other people's files, replaced runs, a full disk,
damaged checkpoints, resumes that change what they may not, paths under a file."""

import contextlib
import errno
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pyrovae import runs
from pyrovae.cli import main
from pyrovae.errors import PyrovaeError
from pyrovae.training import loop
from pyrovae.training.loop import TrainingDiverged, load_run, train
from tests.conftest import REPO

TINY = dict(epochs=1, hidden=[16], z_dim=2, progress=False, figures=False)
CLI = ["--dataset", "digits", "--limit", "100", "--epochs", "1", "--hidden", "8", "--z-dim", "2",
       "--no-progress"]


@pytest.fixture(scope="module")
def small(digits):
    return digits.subset(120, 30)


def weights(run_dir):
    return torch.load(run_dir / runs.CHECKPOINT, weights_only=True)["state"]["module"]


def snapshot(folder):
    """Every file under ``folder`` (pyrovae's lock aside) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != runs.LOCK}


@pytest.fixture
def diverging(monkeypatch):
    """``with diverging(): train(...)`` trains on a loss that is nan from the first step."""
    real = loop.make_elbo

    def poisoned(*args, **kwargs):
        elbo = real(*args, **kwargs)
        loss = elbo.differentiable_loss
        elbo.differentiable_loss = lambda *a, **k: loss(*a, **k) * float("nan")
        return elbo

    @contextlib.contextmanager
    def patch():
        with monkeypatch.context() as m:
            m.setattr(loop, "make_elbo", poisoned)
            yield

    return patch


def no_temporary_files(folder):
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(
        (runs.STAGING, runs.REPLACED))] == []


# --------------------------------------------------------------------------- one writer at a time


def test_a_second_writer_in_this_process_is_refused(tmp_path, small, single_thread):
    train(data=small, run_dir=tmp_path, **TINY)
    before = snapshot(tmp_path)
    with runs.lock(tmp_path):
        for kwargs in (dict(resume=True, epochs=2), dict(overwrite=True)):
            with pytest.raises(PyrovaeError, match="being written by another pyrovae process"):
                train(data=small, run_dir=tmp_path, **{**TINY, **kwargs})
    assert snapshot(tmp_path) == before
    train(data=small, run_dir=tmp_path, resume=True, **{**TINY, "epochs": 2})  # released


def test_a_second_process_is_refused_at_once(tmp_path, capsys):
    """A real second process holds the lock; ``pyrovae train`` on the same --out exits 2 at once."""
    out = tmp_path / "run"
    out.mkdir()
    holder = ("import sys; from pyrovae import runs\n"
              "with runs.lock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert main(["train", *CLI, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err, err
        assert f"another pyrovae process (pid {proc.pid})" in err
    finally:
        proc.communicate("", timeout=60)
    assert sorted(p.name for p in out.iterdir()) == [runs.LOCK]  # nothing was written
    assert main(["train", *CLI, "--out", str(out)]) == 0  # the holder has exited


def test_temporary_files_belong_to_one_process(tmp_path):
    """Another writer's half-written ``checkpoint.pt.tmp`` is neither used nor removed."""
    theirs = tmp_path / "checkpoint.pt.tmp"
    theirs.write_bytes(b"half of someone else's checkpoint")
    runs.save_checkpoint(tmp_path / runs.CHECKPOINT, {"x": torch.ones(2)})
    runs.write_json(tmp_path / "eval.json", {"a": 1})
    assert theirs.read_bytes() == b"half of someone else's checkpoint"
    assert torch.equal(runs.load_checkpoint(tmp_path)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.tmp",
                                                          "eval.json"]


# --------------------------------------------------------------------------- which folders train writes


@pytest.mark.parametrize("files", [
    {"config.json": '{"lr": 0.1, "model": "resnet"}\n', "metrics.jsonl": '{"acc": 0.9}\n'},
    {"notes.txt": "my notes"},
    {"figures/plot.png": "not pyrovae's"},
], ids=["their-config-and-metrics", "any-file", "their-figures"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_other_files_is_refused(tmp_path, small, files, overwrite):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    with pytest.raises(PyrovaeError, match="but no pyrovae run.*choose an empty or new folder"):
        train(data=small, run_dir=tmp_path, overwrite=overwrite, **TINY)
    assert snapshot(tmp_path) == before


def test_new_empty_and_unfinished_run_folders_are_written(tmp_path, small, single_thread, diverging):
    train(data=small, run_dir=tmp_path / "new" / "deep", **TINY)
    (tmp_path / "empty").mkdir()
    train(data=small, run_dir=tmp_path / "empty", **TINY)
    unfinished = tmp_path / "unfinished"  # diverged in its first epoch: a config, no checkpoint
    with diverging(), pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train(data=small, run_dir=unfinished, **TINY)
    assert sorted(p.name for p in unfinished.iterdir()) == [".lock", "config.json", "figures"]
    run = train(data=small, run_dir=unfinished, **TINY)
    assert load_run(unfinished).metrics == run.metrics and no_temporary_files(unfinished)


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, small):
    with pytest.raises(PyrovaeError, match="unknown estimator"):
        train(data=small, run_dir=tmp_path / "run", estimator="magic", **TINY)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- replacing a run


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, small,
                                                                        single_thread, diverging):
    old = train(data=small, run_dir=tmp_path, **TINY)
    (tmp_path / "eval.json").write_text('{"log_px": -30.0}\n')
    before = snapshot(tmp_path)
    with diverging(), pytest.raises(TrainingDiverged, match=f"the run already in {tmp_path} is left "
                                                           "as it was"):
        train(data=small, run_dir=tmp_path, overwrite=True, **{**TINY, "lr": 10.0, "z_dim": 3})
    assert snapshot(tmp_path) == before and no_temporary_files(tmp_path)
    back = load_run(tmp_path, data=False)
    assert back.vae.z_dim == 2 and back.metrics == old.metrics
    for a, b in zip(old.vae.state_dict().values(), back.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    new = train(data=small, run_dir=tmp_path, overwrite=True, **{**TINY, "z_dim": 3, "seed": 1})
    assert not (tmp_path / "eval.json").exists()  # nothing of the replaced run stays
    assert load_run(tmp_path, data=False).vae.z_dim == 3
    assert runs.read_metrics(tmp_path) == new.metrics and len(new.metrics) == 1
    assert runs.read_config(tmp_path)["z_dim"] == 3 and no_temporary_files(tmp_path)


def test_a_killed_replacement_leaves_nothing_in_the_way(tmp_path, small):
    train(data=small, run_dir=tmp_path, **TINY)
    (tmp_path / f"{runs.STAGING}99999").mkdir()  # what a killed process leaves behind
    train(data=small, run_dir=tmp_path, resume=True, **{**TINY, "epochs": 2})
    assert no_temporary_files(tmp_path)


# --------------------------------------------------------------------------- full disk


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["torch.save", "os.fsync"])
def test_a_full_disk_keeps_the_last_checkpoint(tmp_path, small, monkeypatch, where, single_thread):
    train(data=small, run_dir=tmp_path, **TINY)
    good = weights(tmp_path)
    if where == "torch.save":
        monkeypatch.setattr(runs.torch, "save", full_disk)
    else:  # the checkpoint's bytes are in its temporary file, and the disk fills before the rename
        fsync = os.fsync
        monkeypatch.setattr(runs.os, "fsync", lambda fd: full_disk() if os.fstat(fd).st_size > 10_000
                            else fsync(fd))  # a checkpoint, not a small JSON file
    with pytest.raises(PyrovaeError, match=r"cannot write .*checkpoint\.pt \(No space left on "
                                           r"device\): free disk space"):
        train(data=small, run_dir=tmp_path, resume=True, **{**TINY, "epochs": 3})
    monkeypatch.undo()
    assert no_temporary_files(tmp_path)
    for key, value in weights(tmp_path).items():
        assert torch.equal(value, good[key])
    assert runs.read_config(tmp_path)["epochs"] == 1  # the config of the checkpoint it describes
    resumed = train(data=small, run_dir=tmp_path, resume=True, **{**TINY, "epochs": 2})
    assert [r["epoch"] for r in resumed.metrics] == [1, 2]


def test_a_full_disk_during_a_replacement_keeps_the_old_run(tmp_path, small, monkeypatch):
    train(data=small, run_dir=tmp_path, **TINY)
    before = snapshot(tmp_path)
    monkeypatch.setattr(runs.torch, "save", full_disk)
    with pytest.raises(PyrovaeError, match="free disk space"):
        train(data=small, run_dir=tmp_path, overwrite=True, **TINY)
    assert snapshot(tmp_path) == before and no_temporary_files(tmp_path)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("matplotlib: cannot allocate the canvas")])
def test_failing_figures_are_a_warning_not_a_lost_run(tmp_path, small, monkeypatch, error, capsys):
    import pyrovae.viz.report

    def fail(run, *args, **kwargs):
        raise error

    monkeypatch.setattr(pyrovae.viz.report, "save_run_figures", fail)
    with pytest.warns(UserWarning, match=r"figures of .* could not be written \((OSError|RuntimeError)"):
        run = train(data=small, run_dir=tmp_path / "api", **{**TINY, "figures": True})
    assert run.metrics and load_run(tmp_path / "api").metrics == run.metrics
    with pytest.warns(UserWarning, match="could not be written"):
        assert main(["train", *CLI, "--out", str(tmp_path / "cli")]) == 0
    assert runs.load_checkpoint(tmp_path / "cli")["epoch"] == 1


# --------------------------------------------------------------------------- resume


def test_a_diverged_resume_keeps_the_config_of_its_checkpoint(tmp_path, small, single_thread,
                                                              diverging):
    train(data=small, run_dir=tmp_path, **TINY)
    lr = runs.read_config(tmp_path)["lr"]
    with diverging(), pytest.raises(TrainingDiverged, match=r"epoch 1\) is intact"):
        train(data=small, run_dir=tmp_path, resume=True, lr=10.0, epochs=3, progress=False,
              figures=False)
    assert runs.read_config(tmp_path)["lr"] == lr and runs.read_config(tmp_path)["epochs"] == 1
    train(data=small, run_dir=tmp_path, resume=True, lr=lr / 2, epochs=2, progress=False,
          figures=False)
    config = json.loads((tmp_path / runs.CONFIG).read_text())
    assert config["lr"] == lr / 2 and config["epochs"] == 2 and config["pyrovae"] == "run-1"


@pytest.mark.parametrize("change,recorded", [
    (dict(dataset="mnist"), "dataset 'digits'"),
    (dict(likelihood="gaussian"), "likelihood 'bernoulli'"),
    (dict(z_dim=5), "z_dim 2"),
    (dict(hidden=[32]), "hidden [16]"),
    (dict(config={"z_dim": 5}), "z_dim 2"),
    (dict(batch_size=7), "batch_size 32"),
])
def test_resume_refuses_other_data_and_model_options(tmp_path, small, change, recorded):
    train(data=small, run_dir=tmp_path, **TINY)
    with pytest.raises(PyrovaeError, match=rf"cannot change .* was trained with {re.escape(recorded)}"):
        train(data=small, run_dir=tmp_path, resume=True, epochs=2, progress=False, **change)


def test_resume_refuses_data_of_another_name(tmp_path, small):
    train(data=small, run_dir=tmp_path, **TINY)
    other = type(small)("npy:other.npy", small.train_x, small.test_x, None, None)
    with pytest.raises(PyrovaeError, match=r"dataset 'digits' \(asked for 'npy:other.npy'\)"):
        train(data=other, run_dir=tmp_path, resume=True, epochs=2, progress=False)


# --------------------------------------------------------------------------- damaged checkpoints


def _set(path, value):
    def damage(ckpt):
        *parents, last = path
        for key in parents:
            ckpt = ckpt[key]
        ckpt[last] = value
    return damage


def _drop(*path):
    def damage(ckpt):
        *parents, last = path
        for key in parents:
            ckpt = ckpt[key]
        del ckpt[last]
    return damage


def _first_weight(ckpt):
    return next(iter(ckpt["state"]["module"]))


def _reshape_weight(ckpt):
    key = _first_weight(ckpt)
    ckpt["state"]["module"][key] = torch.zeros(3, 3)


def _nan_weight(ckpt):
    key = _first_weight(ckpt)
    ckpt["state"]["module"][key] = torch.full_like(ckpt["state"]["module"][key], float("nan"))


def _drop_weight(ckpt):
    del ckpt["state"]["module"][_first_weight(ckpt)]


def _extra_weight(ckpt):
    ckpt["state"]["module"]["stray.weight"] = torch.zeros(2)


def _optimizer_shape(ckpt):
    state = ckpt["optimizer"]["state"]
    state[next(iter(state))]["exp_avg"] = torch.zeros(1)


DAMAGES = {
    "format-tag": (_set(["format"], "pyrovae-checkpoint-9"), "did not write"),
    "missing-optimizer": (_drop("optimizer"), "'optimizer' is missing"),
    "missing-state": (_drop("state"), "'state' is missing"),
    "epoch-string": (_set(["epoch"], "3"), "'epoch' is '3'"),
    "config-lr-string": (_set(["config", "lr"], "fast"), "config 'lr' is 'fast'"),
    "config-unknown-key": (_set(["config", "colour"], "red"), "'colour' is not a training option"),
    "spec-string": (_set(["spec"], "vae"), "'spec' is str"),
    "spec-bad-value": (_set(["spec", "z_dim"], -2), "spec has z_dim=-2 and its config z_dim=2"),
    "weight-shape": (_reshape_weight, r"has shape \(3, 3\)"),
    "weight-missing": (_drop_weight, "is missing"),
    "weight-extra": (_extra_weight, "'stray.weight' is not in the model"),
    "weight-string": (_set(["state", "module", "decoder"], "weights"), "'state' must hold"),
    "weight-nan": (_nan_weight, "is nan or inf"),
    "rng-float": (_set(["rng", "torch"], torch.zeros(5056)), "'rng' must hold"),
    "rng-short": (_set(["rng", "torch"], torch.zeros(10, dtype=torch.uint8)), "wrong size"),
    "schedule": (_set(["schedule"], {"name": "zigzag"}), "'schedule'"),
    "optimizer-groups": (_set(["optimizer", "param_groups"], []), "'optimizer' does not fit"),
    "optimizer-shape": (_optimizer_shape, "optimizer state 'exp_avg' does not fit"),
    "inputs": (_set(["inputs", "shapes"], "1x8x8"), "'inputs'"),
}
LOAD_ONLY = {"optimizer-groups", "optimizer-shape"}  # found when training resumes


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, small):
    folder = tmp_path_factory.mktemp("good")
    train(data=small, run_dir=folder, **TINY)
    return (folder / runs.CHECKPOINT).read_bytes()


@pytest.mark.parametrize("how", ["load_run", "resume"])
@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_checkpoint_is_one_clear_error(tmp_path, small, good_checkpoint, name, how):
    damage, match = DAMAGES[name]
    (tmp_path / runs.CHECKPOINT).write_bytes(good_checkpoint)
    ckpt = torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)
    damage(ckpt)
    torch.save(ckpt, tmp_path / runs.CHECKPOINT)
    runs.write_config(tmp_path, {"dataset": "digits"})
    if how == "load_run" and name in LOAD_ONLY:
        load_run(tmp_path, data=False)  # what loading a model needs is intact
        return
    with pytest.raises(PyrovaeError, match=match) as info:
        if how == "load_run":
            load_run(tmp_path, data=False)
        else:
            train(data=small, run_dir=tmp_path, resume=True, epochs=2, progress=False)
    assert type(info.value) is PyrovaeError
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_evaluate_refuses_nan_weights(tmp_path, good_checkpoint, capsys):
    (tmp_path / runs.CHECKPOINT).write_bytes(good_checkpoint)
    ckpt = torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)
    _nan_weight(ckpt)
    torch.save(ckpt, tmp_path / runs.CHECKPOINT)
    assert main(["evaluate", str(tmp_path), "--iwae-k", "2"]) == 2
    assert f"parameter '{_first_weight(ckpt)}' is nan or inf" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()


def test_training_never_writes_non_finite_state(tmp_path, small, monkeypatch):
    real, calls = loop.state_of, [0]

    def poisoned(model, program):  # the state saved at epoch 2 holds a nan buffer
        state = real(model, program)
        calls[0] += 1
        if calls[0] == 2:
            state["module"]["decoder.poisoned"] = torch.tensor([float("nan")])
        return state

    monkeypatch.setattr(loop, "state_of", poisoned)
    with pytest.raises(TrainingDiverged, match=r"'decoder.poisoned' became nan or inf.*epoch 1\) is "
                                               "intact"):
        train(data=small, run_dir=tmp_path, **{**TINY, "epochs": 3})
    assert torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)["epoch"] == 1


# --------------------------------------------------------------------------- paths under a file


def test_paths_under_a_file_name_the_file(tmp_path, small, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for call in (lambda: runs.make_run_dir(blocker / "run", "x"),
                 lambda: runs.write_json(blocker / "eval.json", {}),
                 lambda: runs.write_csv(blocker / "deep" / "t.csv", ["a"], [{"a": 1}]),
                 lambda: runs.save_checkpoint(blocker / runs.CHECKPOINT, {}),
                 lambda: train(data=small, run_dir=blocker / "run", **TINY)):
        with pytest.raises(PyrovaeError, match=f"{blocker} is a file, not a folder"):
            call()
    assert main(["train", *CLI, "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{blocker} is a file" in err, err
    assert blocker.read_text() == "not a folder"
