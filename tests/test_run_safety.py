"""Run folders and user errors around them: overwrite, resume, broken files, bad numbers."""

import json

import numpy as np
import pytest
import torch

from pyrovae import runs
from pyrovae.cli import main
from pyrovae.data.datasets import load_dataset
from pyrovae.errors import PyrovaeError
from pyrovae.infer.schedules import parse_schedule
from pyrovae.training.loop import load_run, train

TINY = dict(epochs=1, hidden=[16], z_dim=2, progress=False, figures=False)


@pytest.fixture(scope="module")
def small(digits):
    return digits.subset(120, 30)


def test_a_trained_run_is_not_overwritten_by_accident(tmp_path, small):
    train(data=small, run_dir=tmp_path, **TINY)
    with pytest.raises(PyrovaeError,
                       match=r"already holds a trained run: resume it with (resume=True|--resume)"):
        train(data=small, run_dir=tmp_path, **TINY)
    run = train(data=small, run_dir=tmp_path, overwrite=True, **{**TINY, "z_dim": 3})
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["spec"]["z_dim"] == 3
    assert len(run.metrics) == 1 and len(runs.read_metrics(tmp_path)) == 1


def test_in_memory_data_records_its_own_name_and_defaults(tmp_path, small):
    run = train(data=small, run_dir=tmp_path, **TINY)
    assert run.config.dataset == "digits" and run.config.batch_size == 32  # digits' default
    assert load_run(tmp_path).data.shape == (1, 8, 8)


def test_a_half_written_metrics_line_is_dropped(tmp_path, small):
    train(data=small, run_dir=tmp_path, **TINY)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "tr')
    assert [r["epoch"] for r in runs.read_metrics(tmp_path)] == [1]
    resumed = train(run_dir=tmp_path, data=small, resume=True, epochs=2, progress=False,
                    figures=False)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2]
    assert [json.loads(line)["epoch"] for line in
            (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_may_point_at_moved_data(tmp_path, small):
    train(data=small, run_dir=tmp_path, **TINY)
    run = train(run_dir=tmp_path, data=small, resume=True, epochs=2, data_dir=str(tmp_path),
                progress=False, figures=False)
    assert run.config.data_dir == str(tmp_path)


def test_broken_and_foreign_checkpoints(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(PyrovaeError, match="cannot read checkpoint"):
        load_run(tmp_path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    with pytest.raises(PyrovaeError, match="did not write"):
        load_run(tmp_path)
    with pytest.raises(PyrovaeError, match="device must be cpu, cuda, cuda:N or auto"):
        load_run(tmp_path, device="tpu")


@pytest.mark.parametrize("argv,match", [
    (["train", "--dataset", "digits", "--seed", "-1"], "--seed must be a whole number in [0"),
    (["train", "--dataset", "digits", "--kl-schedule", "linear:steps=nan"], "must be finite"),
    (["train", "--dataset", "digits", "--kl-schedule", "cyclical:cycles=inf"], "must be finite"),
])
def test_bad_numbers_are_one_line_errors(argv, match, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "r"), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_steep_sigmoid_schedule_does_not_overflow():
    s = parse_schedule("sigmoid:steps=100,k=2000", beta=1.0, total_steps=100)
    assert s(0) == 0.0 and s(50) == pytest.approx(0.5) and s(99) == pytest.approx(1.0)


def test_images_with_an_empty_dimension(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((5, 0, 28), dtype=np.float32))
    with pytest.raises(PyrovaeError, match="no size 0"):
        load_dataset(f"npy:{tmp_path / 'e.npy'}")


def test_evaluate_on_the_training_split_binarizes_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--limit", "100", "--epochs", "1", "--hidden",
                 "8", "--z-dim", "2", "--out", str(out), "--no-progress"]) == 0
    assert main(["evaluate", str(out), "--split", "train", "--iwae-k", "5"]) == 0
    result = json.loads((out / "eval-K5-train.json").read_text())
    assert result["split"] == "train" and result["log_px"] < 0
    assert not (out / "eval-K5.json").exists()  # the held-out evaluation file is left alone
