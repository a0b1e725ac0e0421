"""Training and evaluation end to end on small data: learning, bounds, checkpoints, resume, NaN."""

import math

import pytest
import torch

from pyrovae import runs
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation import elbo_terms, evaluate, log_likelihood
from pyrovae.training import TrainingDiverged, build_vae, load_run, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    run_dir = tmp_path_factory.mktemp("run")
    return train(dataset="digits", data=digits, epochs=4, run_dir=run_dir, progress=False)


def test_training_lowers_the_loss_by_a_clear_margin(trained):
    first, last = trained.metrics[0], trained.metrics[-1]
    assert len(trained.metrics) == 4
    untrained = build_vae(trained.config, trained.data.shape)
    start = elbo_terms(untrained, trained.data.test_x)["elbo"]  # about -64 log 2 = -44 nats
    assert last["test_elbo"] > start + 10
    assert last["train_loss"] < first["train_loss"]
    assert math.isclose(last["test_elbo"], last["test_recon"] - last["test_kl"], rel_tol=1e-6)
    assert last["test_kl"] > 0.1 and last["active_units"] >= 1  # the latent is in use


def test_held_out_bounds_are_ordered(trained):
    x = trained.data.test_x
    torch.manual_seed(0)
    elbo = elbo_terms(trained.vae, x)["elbo"]
    iwae10 = log_likelihood(trained.vae, x, k=10)
    iwae100 = log_likelihood(trained.vae, x, k=100)
    assert all(map(math.isfinite, [elbo, iwae10.mean().item(), iwae100.mean().item()]))
    # per-example spread gives the Monte Carlo error of the means
    se = (iwae100 - iwae10).std().item() / math.sqrt(len(x))
    assert elbo <= iwae10.mean().item() + 0.05
    assert iwae10.mean().item() <= iwae100.mean().item() + 3 * se
    assert iwae100.mean().item() - elbo > 0.1  # the bound really tightens


def test_iwae_chunking_does_not_change_the_estimate(trained):
    x = trained.data.test_x[:20]
    torch.manual_seed(3)
    whole = log_likelihood(trained.vae, x, k=64)
    torch.manual_seed(3)
    tiny = log_likelihood(trained.vae, x, k=64, max_elements=64 * 64 * 4)  # 4 examples' worth
    assert whole.shape == (20,)
    assert abs(whole.mean().item() - tiny.mean().item()) < 0.5  # same estimator, other draws


def test_run_folder_contents_and_weights_only_checkpoint(trained):
    folder = trained.run_dir
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (folder / name).is_file()
    for fig in ("losses", "reconstructions", "samples", "latents"):
        assert (folder / "figures" / f"{fig}.png").stat().st_size > 1000
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 4 and ckpt["config"]["dataset"] == "digits"
    rows = runs.read_metrics(folder)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for key in ("epoch", "seconds", "train_loss", "test_elbo", "test_recon", "test_kl", "beta"):
        assert key in rows[-1]


def test_checkpoint_round_trip_gives_identical_outputs(trained):
    loaded = load_run(trained.run_dir, data=False)
    x = trained.data.test_x[:8]
    trained.vae.eval()
    for a, b in zip(trained.vae.encode(x), loaded.vae.encode(x), strict=True):
        assert torch.equal(a, b)
    z = torch.randn(5, trained.vae.z_dim)
    assert torch.equal(trained.vae.decode(z), loaded.vae.decode(z))


def test_resume_continues_exactly(tmp_path, digits):
    small = digits.subset(300, 60)
    straight = train(dataset="digits", data=small, epochs=3, run_dir=tmp_path / "a",
                     progress=False, figures=False)
    train(dataset="digits", data=small, epochs=1, run_dir=tmp_path / "b", progress=False,
          figures=False)
    resumed = train(run_dir=tmp_path / "b", data=small, resume=True, epochs=3, progress=False,
                    figures=False)
    assert [r["epoch"] for r in runs.read_metrics(tmp_path / "b")] == [1, 2, 3]
    for p, q in zip(straight.vae.parameters(), resumed.vae.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    assert resumed.metrics[-1]["train_loss"] == pytest.approx(straight.metrics[-1]["train_loss"])


def test_resume_refuses_to_change_the_model(tmp_path, digits):
    small = digits.subset(100, 20)
    train(dataset="digits", data=small, epochs=1, run_dir=tmp_path, progress=False, figures=False)
    with pytest.raises(PyrovaeError, match=r"cannot change \['z_dim'\]"):
        train(run_dir=tmp_path, data=small, resume=True, epochs=2, z_dim=3, progress=False)
    with pytest.raises(PyrovaeError, match="no checkpoint"):
        train(run_dir=tmp_path / "empty", resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits, monkeypatch):
    import pyrovae.training as training

    small = digits.subset(200, 40)
    real_make_elbo = training.make_elbo

    def poisoned(*args, **kwargs):
        elbo, calls = real_make_elbo(*args, **kwargs), [0]
        real = elbo.loss_and_grads

        def loss_and_grads(*a, **k):
            calls[0] += 1
            return float("nan") if calls[0] > 10 else real(*a, **k)  # epoch 2 of 7 steps each

        elbo.loss_and_grads = loss_and_grads
        return elbo

    monkeypatch.setattr(training, "make_elbo", poisoned)
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 2.*epoch 1\) is intact"):
        train(dataset="digits", data=small, epochs=3, run_dir=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_evaluate_summary(trained):
    result = evaluate(trained.vae, trained.data.test_x, iwae_k=20)
    assert result["n"] == len(trained.data.test_x)
    assert result["log_px"] >= result["elbo"] - 0.1
    with pytest.raises(PyrovaeError, match="K must be a whole number >= 1"):
        log_likelihood(trained.vae, trained.data.test_x, k=0)


@pytest.mark.parametrize("bad,match", [
    (dict(epochs=0), "--epochs must be a whole number >= 1"),
    (dict(lr=-1.0), "--lr must be a positive number"),
    (dict(hidden=[0]), "--hidden must be sizes"),
    (dict(likelihood="bernoulli", binarize="none"), "needs binary data"),
    (dict(device="tpu"), "--device must be cpu, cuda"),
    (dict(estimator="magic"), "unknown estimator 'magic'"),
    (dict(kl_schedule="zigzag"), "unknown KL schedule 'zigzag'"),
    (dict(colour="red"), r"unknown config keys \['colour'\]"),
])
def test_bad_training_arguments(digits, bad, match):
    with pytest.raises(PyrovaeError, match=match):
        train(dataset="digits", data=digits.subset(50, 10), **{"epochs": 1, **bad}, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only machines")
def test_cuda_without_gpu_is_a_clear_error(digits):
    with pytest.raises(PyrovaeError, match="no CUDA GPU is available"):
        train(dataset="digits", data=digits, epochs=1, device="cuda", progress=False)
