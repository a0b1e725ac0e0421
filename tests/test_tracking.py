"""Tracking backends, read back with their own readers: JSONL rows, TensorBoard's EventAccumulator,
MLflow's client on the file store inside the run folder."""

import json
import os
import warnings

import pytest
import torch

from pyrovae import checks
from pyrovae.errors import PyrovaeError
from pyrovae.tracking import (
    JSONLTracker,
    MLflowTracker,
    TensorBoardTracker,
    Tracker,
    Trackers,
    TrackingWarning,
    build_trackers,
    flatten,
    read_steps,
)

CONFIG = {"dataset": "digits", "lr": 0.003, "hidden": [128], "z_dim": None, "eval_held_out": True,
          "extra": {"note": "x" * 7000, "tries": 2}, "epochs": 2}


def _train(tracker, steps=range(1, 7), per_epoch=3, loss=lambda s: 10.0 / s, images=True):
    """What the loop sends: a loss per step, a metrics row and an image grid per epoch."""
    torch.manual_seed(0)
    for step in steps:
        epoch = (step - 1) // per_epoch + 1
        tracker.log_step(step, {"train_loss": loss(step), "beta": 1.0}, epoch=epoch)
        if step % per_epoch == 0:
            tracker.log_epoch(epoch, step, {"epoch": epoch, "test_elbo": -100.0 + step,
                                            "compile": "eager", "active_units": None})
            if images:
                tracker.log_images(step, "samples", torch.rand(4, 1, 8, 8))


# ---------------------------------------------------------------- interface, names, failures


def test_flatten_nested_config_to_params():
    assert flatten({"a": 1, "b": [1, 2], "c": None, "d": {"e": True, "f": {"g": "h"}}, "i": {},
                    "j": float("nan")}) == \
        {"a": 1, "b": "[1, 2]", "c": "None", "d.e": True, "d.f.g": "h", "i": "{}", "j": "nan"}


def test_unknown_tracker_names_the_valid_ones():
    with pytest.raises(PyrovaeError, match=r"unknown tracker\(s\) \['wandb'\] in tracking: choose "
                                           r"from jsonl, tensorboard, mlflow"):
        build_trackers("tensorboard,wandb", "run")
    with checks.command_line(), pytest.raises(PyrovaeError, match="in --tracking"):
        build_trackers(["wandb"], "run")


def test_build_trackers_parses_names_and_checks_arguments(tmp_path):
    trackers = build_trackers(" JSONL, jsonl,", tmp_path, every=7)
    assert [type(t) for t in trackers.trackers] == [JSONLTracker] and trackers.trackers[0].every == 7
    assert not build_trackers(None, None) and not build_trackers("none", None)
    with pytest.raises(PyrovaeError, match="writes into the run folder: pass run_dir"):
        build_trackers("jsonl", None)
    with pytest.raises(PyrovaeError, match="every .* must be a whole number >= 1, got 0"):
        build_trackers("jsonl", tmp_path, every=0)


def test_missing_mlflow_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)  # `import mlflow` now fails
    with pytest.raises(PyrovaeError, match=r"pip install mlflow-skinny \(or pyrovae\[tracking\]\)"):
        build_trackers("mlflow", "run")


class Crashing(Tracker):
    """A backend that dies on its second step (a full disk, a crashed server)."""

    name = "crashing"

    def __init__(self):
        self.every, self.steps, self.closed = 1, [], []

    def start(self, run_dir, config, *, step=0):
        pass

    def log_step(self, step, scalars, *, epoch=None):
        if self.steps:
            raise OSError(28, "No space left on device")
        self.steps.append(step)

    def close(self, failed=False):
        self.closed.append(failed)


def test_a_failing_tracker_warns_once_and_the_others_go_on(tmp_path):
    crashing, jsonl = Crashing(), JSONLTracker(every=1)
    trackers = Trackers([crashing, jsonl])
    with pytest.warns(TrackingWarning) as caught:
        with trackers:
            trackers.start(tmp_path, CONFIG)
            _train(trackers, images=False)
    assert len(caught) == 1
    assert "crashing failed in log_step (OSError: [Errno 28] No space left on device)" in \
        str(caught[0].message)
    assert crashing.steps == [1] and crashing.closed == [True]  # closed once, not called again
    assert [r["step"] for r in read_steps(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert trackers.active == [jsonl] and trackers.due(5)


def test_a_tracker_that_cannot_write_is_turned_off(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    trackers = Trackers([JSONLTracker(every=1)])
    with pytest.warns(TrackingWarning, match="jsonl failed in start"):
        trackers.start(blocked, CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        _train(trackers, images=False)
        trackers.close()
    assert not trackers and not trackers.due(6)


def test_images_of_the_wrong_shape_are_the_callers_error(tmp_path):
    trackers = Trackers([JSONLTracker()])
    trackers.start(tmp_path, CONFIG)
    with pytest.raises(PyrovaeError, match=r"\(N, C, H, W\) with C = 1 or 3, got \(8, 8\)"):
        trackers.log_images(1, "samples", torch.rand(8, 8))
    assert trackers  # still on
    trackers.close()


# ---------------------------------------------------------------- JSONL


def test_jsonl_rows_every_n_steps(tmp_path):
    with JSONLTracker(every=2) as tracker:
        tracker.start(tmp_path, CONFIG)
        _train(tracker)
    assert read_steps(tmp_path) == [
        {"step": s, "epoch": (s - 1) // 3 + 1, "train_loss": 10.0 / s, "beta": 1.0} for s in (2, 4, 6)]
    assert tracker.due(4) and not tracker.due(5)


def test_jsonl_resume_drops_rows_after_the_checkpoint_and_a_fresh_start_empties(tmp_path):
    with JSONLTracker(every=1) as tracker:
        tracker.start(tmp_path, CONFIG)
        _train(tracker, steps=range(1, 6))  # killed after step 5; checkpoint at step 3
    with JSONLTracker(every=1) as tracker:
        tracker.start(tmp_path, CONFIG, step=3)
        _train(tracker, steps=range(4, 7), loss=lambda s: -float(s))
    rows = read_steps(tmp_path)
    assert [(r["step"], r["train_loss"]) for r in rows] == \
        [(1, 10.0), (2, 5.0), (3, 10.0 / 3), (4, -4.0), (5, -5.0), (6, -6.0)]
    with JSONLTracker(every=1) as tracker:
        tracker.start(tmp_path, CONFIG)  # overwrite: a new run
    assert read_steps(tmp_path) == []


# ---------------------------------------------------------------- TensorBoard


@pytest.fixture(scope="module")
def accumulator():
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(log_dir):
        events = EventAccumulator(str(log_dir))
        events.Reload()
        return events

    return read


def _scalars(events, tag):
    return [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]


def test_tensorboard_scalars_images_and_hparams(tmp_path, accumulator):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    with TensorBoardTracker(every=2) as tracker:
        tracker.start(tmp_path, CONFIG)
        _train(tracker)
    events = accumulator(tmp_path / "tensorboard")
    assert _scalars(events, "step/train_loss") == [(2, 5.0), (4, 2.5), (6, 10 / 6)]
    assert _scalars(events, "epoch/test_elbo") == [(3, -97.0), (6, -94.0)]
    assert "epoch/compile" not in events.Tags()["scalars"]
    images = events.Images("samples")
    assert [i.step for i in images] == [3, 6] and (images[0].width, images[0].height) == (19, 19)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.003)
    assert hparams["dataset"].string_value == "digits" and hparams["extra.tries"].number_value == 2
    assert json.loads(events.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
                      .decode().strip("`\n"))["hidden"] == [128]


def test_tensorboard_resume_replaces_the_steps_after_the_checkpoint(tmp_path, accumulator):
    with TensorBoardTracker(every=1) as tracker:
        tracker.start(tmp_path, CONFIG)
        _train(tracker, steps=range(1, 6), images=False)  # killed after step 5; checkpoint at 3
    with TensorBoardTracker(every=1) as tracker:
        tracker.start(tmp_path, CONFIG, step=3)
        _train(tracker, steps=range(4, 7), loss=lambda s: -float(s), images=False)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = accumulator(tmp_path / "tensorboard")
    assert _scalars(events, "step/train_loss") == \
        [(1, 10.0), (2, 5.0), (3, 10 / 3), (4, -4.0), (5, -5.0), (6, -6.0)]
    assert _scalars(events, "epoch/test_elbo") == [(3, -97.0), (6, -94.0)]
    with TensorBoardTracker(every=1) as tracker:
        tracker.start(tmp_path, CONFIG)  # overwrite: the replaced run's events go
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_client():
    """``client(run_dir)``: MLflow's own client on the store in the run folder (one slow import)."""
    pytest.importorskip("mlflow")
    from pyrovae.tracking.mlflow import client

    return client


def _history(client, run_id, key):
    return [(m.step, pytest.approx(m.value)) for m in client.get_metric_history(run_id, key)]


def test_mlflow_metrics_params_and_images(tmp_path, mlflow_client, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")  # MLflow would raise on long values
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    with MLflowTracker(every=2) as tracker:
        tracker.start(tmp_path, CONFIG)
        run_id = tracker.run_id
        _train(tracker)
    assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == before  # no setting left behind
    assert json.loads((tmp_path / "mlflow.json").read_text())["run_id"] == run_id
    client = mlflow_client(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert client.get_experiment(run.info.experiment_id).name == "pyrovae"
    assert _history(client, run_id, "step/train_loss") == [(2, 5.0), (4, 2.5), (6, 10 / 6)]
    assert _history(client, run_id, "epoch/test_elbo") == [(3, -97.0), (6, -94.0)]
    assert "epoch/compile" not in run.data.metrics
    params = run.data.params
    assert params["lr"] == "0.003" and params["hidden"] == "[128]" and params["z_dim"] == "None"
    assert params["extra.tries"] == "2" and params["extra.note"] == "x" * 6000  # MLflow's limit
    pngs = [a.path for a in client.list_artifacts(run_id, "images/samples")]
    assert pngs == ["images/samples/samples-step00000003.png", "images/samples/samples-step00000006.png"]


def test_mlflow_resume_continues_the_same_run(tmp_path, mlflow_client):
    tracker = MLflowTracker(every=1)
    tracker.start(tmp_path, CONFIG)
    run_id = tracker.run_id
    _train(tracker, steps=range(1, 4), images=False)
    tracker.close(failed=True)  # interrupted
    with MLflowTracker(every=1) as tracker:
        tracker.start(tmp_path, {**CONFIG, "epochs": 4}, step=3)
        assert tracker.run_id == run_id
        _train(tracker, steps=range(4, 7), images=False)
    client = mlflow_client(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(client, run_id, "step/train_loss")] == [1, 2, 3, 4, 5, 6]
    assert run.data.params["epochs"] == "2" and run.data.tags["resumed.epochs"] == "4"
    with MLflowTracker() as tracker:
        tracker.start(tmp_path, CONFIG)  # overwrite: a new MLflow run beside the old one
        assert tracker.run_id != run_id
    experiment = client.get_experiment_by_name("pyrovae").experiment_id
    assert len(client.search_runs([experiment])) == 2


def test_mlflow_resume_without_its_store_starts_a_new_run(tmp_path, mlflow_client):
    import shutil

    with MLflowTracker() as tracker:
        tracker.start(tmp_path, CONFIG)
        old = tracker.run_id
    shutil.rmtree(tmp_path / "mlruns")  # the store was deleted; the run folder was kept
    with MLflowTracker(every=1) as tracker:
        tracker.start(tmp_path, CONFIG, step=3)
        new = tracker.run_id
        tracker.log_step(4, {"train_loss": 1.0})
    assert new != old and json.loads((tmp_path / "mlflow.json").read_text())["run_id"] == new
    assert _history(mlflow_client(tmp_path), new, "step/train_loss") == [(4, 1.0)]


# ---------------------------------------------------------------- with the training loop


def test_train_tracks_steps_epochs_and_images_and_resumes(tmp_path, digits, single_thread,
                                                           accumulator, mlflow_client):
    """train(tracking=...) feeds every backend from the loop itself; tracking does not change the
    run (images are drawn on a fork of the random state); a resume continues the same records."""
    from pyrovae.tracking.jsonl import read_steps
    from pyrovae.training import train

    small = digits.subset(200, 100)
    opts = dict(dataset="digits", data=small, batch_size=50, progress=False, figures=False)
    plain = train(epochs=3, run_dir=tmp_path / "plain", **opts)
    out = tmp_path / "tracked"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)  # a backend that fails fails the test
        train(epochs=2, run_dir=out, tracking="tensorboard,mlflow,jsonl", track_every=3, **opts)
        run = train(epochs=3, run_dir=out, resume=True, tracking="tensorboard,mlflow,jsonl",
                    track_every=3, **{k: v for k, v in opts.items() if k != "dataset"})
    assert [r["test_elbo"] for r in run.metrics] == [r["test_elbo"] for r in plain.metrics]
    expected = [(row["step"], pytest.approx(row["test_elbo"])) for row in run.metrics]
    assert [row["step"] for row in run.metrics] == [4, 8, 12]
    events = accumulator(out / "tensorboard")
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("epoch/test_elbo")] == expected
    assert [e.step for e in events.Scalars("step/train_loss")] == [3, 6, 9, 12]
    assert [i.step for i in events.Images("samples")] == [4, 8, 12]
    assert [i.step for i in events.Images("reconstructions")] == [4, 8, 12]
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    assert _history(mlflow_client(out), run_id, "epoch/test_elbo") == expected
    assert [r["step"] for r in read_steps(out)] == [3, 6, 9, 12]


def test_train_refuses_an_unknown_tracker_before_writing(tmp_path, digits):
    from pyrovae.training import train

    with pytest.raises(PyrovaeError, match="unknown tracker"):
        train(dataset="digits", data=digits.subset(50, 10), epochs=1, run_dir=tmp_path / "r",
              tracking="wandb", progress=False)
    assert not (tmp_path / "r").exists()


def test_run_folders_know_every_file_a_tracker_writes():
    """A run folder holding tracker files is still a run (not someone else's folder), and an
    overwrite leaves them in place: runs.py lists them, so the list must follow the trackers."""
    from pyrovae import runs
    from pyrovae.tracking import jsonl, mlflow, tensorboard

    assert set(runs.TRACKER_FILES) == {jsonl.STEPS, mlflow.STORE, mlflow.STATE, tensorboard.FOLDER}
