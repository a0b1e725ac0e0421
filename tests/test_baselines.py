"""The AE/DAE/VAE baselines experiment and the sampler and view commands."""

import csv

import numpy as np
import pytest
import torch

from pyrovae.cli import main
from pyrovae.errors import PyrovaeError
from pyrovae.experiments.baselines import compare_models

GREY = dict(dataset="digits", binarize="none", likelihood="gaussian", obs_scale=0.1, epochs=6,
            hidden=[64], z_dim=4)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("baselines")
    rows = compare_models(out, ("ae", "vae"), n_samples=150, data=digits.subset(900, 180), **GREY)
    return out, rows


def test_table_rows_and_files(experiment):
    out, rows = experiment
    assert [(r["model"], r["sampler"]) for r in rows] == [
        ("data", "held-out images"), ("ae", "prior"), ("ae", "aggregate"), ("ae", "gmm"),
        ("vae", "prior"), ("vae", "aggregate"), ("vae", "gmm")]
    with open(out / "baselines.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[4]["score"]) == pytest.approx(rows[4]["score"])
    for name in ("samples-ae-gmm", "samples-vae-prior", "interpolation-ae", "interpolation-vae"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert (out / "classifier.pt").is_file()
    torch.load(out / "classifier.pt", weights_only=True)


def test_the_story_vae_prior_beats_ae_prior_and_fitted_samplers_rescue_the_ae(experiment):
    _, rows = experiment
    real = rows[0]
    by = {(r["model"], r["sampler"]): r for r in rows}
    for r in rows[1:]:
        assert real["score"] > r["score"]
    assert by["vae", "prior"]["score"] > by["ae", "prior"]["score"]
    assert by["ae", "gmm"]["score"] > by["ae", "prior"]["score"]
    assert by["ae", "aggregate"]["score"] > by["ae", "prior"]["score"]


def test_bad_sampler_names(tmp_path, digits):
    with pytest.raises(PyrovaeError, match="unknown sampler"):
        compare_models(tmp_path, ("ae",), samplers=("flow",), data=digits, **GREY)


def test_sample_and_views_commands(experiment, tmp_path, capsys):
    out, _ = experiment
    for sampler in ("prior", "aggregate", "gmm"):
        png = tmp_path / f"{sampler}.png"
        assert main(["sample", str(out / "vae"), "--sampler", sampler, "--n", "9", "--out",
                     str(png)]) == 0
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["views", str(out / "ae"), "--pairs", "2", "--steps", "5"]) == 0
    assert (out / "ae" / "figures" / "traversal.png").is_file()
    assert main(["sample", str(out / "vae"), "--sampler", "flow"]) == 2
    assert "unknown --sampler 'flow'" in capsys.readouterr().err


def test_aggregate_of_a_run_without_its_training_data(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((60, 8, 8)).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"npy:{data}", "--binarize", "none", "--likelihood",
                 "gaussian", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--out", str(run),
                 "--no-progress"]) == 0
    data.unlink()
    assert main(["sample", str(run), "--sampler", "aggregate"]) == 2
    err = capsys.readouterr().err
    assert "--sampler aggregate needs the run's training data" in err and "no file at" in err
    assert main(["sample", str(run), "--sampler", "prior"]) == 0  # the prior needs no data
