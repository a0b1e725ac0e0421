"""Training and evaluation end to end on small data: learning, bounds, checkpoints, resume, NaN.

The built-in VAE and a user's own Pyro program (:class:`CondVAE`: a conditional VAE on ``("x",
"y")`` with its own site and plate names and a ``pyro.param``) go through the same checks.
"""

import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae import runs
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.metrics import elbo_terms, evaluate, log_likelihood
from pyrovae.training.loop import TrainingDiverged, build_vae, load_run, train
from tests.user_models import ConditionalVAE


class CondVAE(ConditionalVAE):
    """A user's conditional VAE defined here (runs record this class's name)."""


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
    assert ckpt["format"] == "pyrovae-checkpoint-2" and ckpt["model_name"] == "vae"
    assert ckpt["spec"]["model"] == "vae" and ckpt["spec"]["z_dim"] == trained.vae.z_dim
    assert ckpt["inputs"]["fields"] == ["x"] and ckpt["inputs"]["shapes"] == [[1, 8, 8]]
    assert ckpt["state"]["module"] and ckpt["state"]["params"] == {}
    rows = runs.read_metrics(folder)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for key in ("epoch", "seconds", "train_loss", "test_elbo", "test_recon", "test_kl", "beta"):
        assert key in rows[-1]


def test_checkpoint_round_trip_gives_identical_outputs(trained):
    loaded = load_run(trained.run_dir, data=False)
    x = trained.data.test_x[:8]
    trained.vae.eval()
    for a, b in zip(pyrovae.encode(trained.vae, x), pyrovae.encode(loaded.vae, x), strict=True):
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
        assert torch.equal(p, q)  # bit for bit: data order, binarization and noise continue
    assert resumed.metrics[-1]["train_loss"] == straight.metrics[-1]["train_loss"]
    assert resumed.metrics[-1]["test_elbo"] == straight.metrics[-1]["test_elbo"]


def test_resume_refuses_to_change_the_model(tmp_path, digits):
    small = digits.subset(100, 20)
    train(dataset="digits", data=small, epochs=1, run_dir=tmp_path, progress=False, figures=False)
    with pytest.raises(PyrovaeError, match=r"cannot change \['z_dim'\]"):
        train(run_dir=tmp_path, data=small, resume=True, epochs=2, z_dim=3, progress=False)
    with pytest.raises(PyrovaeError, match="no checkpoint"):
        train(run_dir=tmp_path / "empty", resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits, monkeypatch):
    from pyrovae.training import loop as training

    small = digits.subset(200, 40)
    real_make_elbo = training.make_elbo

    def poisoned(*args, **kwargs):
        elbo, calls = real_make_elbo(*args, **kwargs), [0]
        real = elbo.differentiable_loss  # what every training step calls (eager or graph)

        def differentiable_loss(*a, **k):
            calls[0] += 1
            loss = real(*a, **k)
            return loss * float("nan") if calls[0] > 10 else loss  # epoch 2 of 7 steps each

        elbo.differentiable_loss = differentiable_loss
        return elbo

    monkeypatch.setattr(training, "make_elbo", poisoned)
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 2.*epoch 1\) is intact"):
        train(dataset="digits", data=small, epochs=3, run_dir=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert ckpt["state"]["module"]
    assert all(torch.isfinite(v).all() for v in ckpt["state"]["module"].values())


def test_evaluate_summary(trained):
    result = evaluate(trained.vae, trained.data.test_x, iwae_k=20)
    assert result["n"] == len(trained.data.test_x)
    assert result["log_px"] >= result["elbo"] - 0.1
    with pytest.raises(PyrovaeError, match="must be a whole number >= 1"):
        log_likelihood(trained.vae, trained.data.test_x, k=0)


@pytest.mark.parametrize("call,match", [
    (lambda m, x: log_likelihood(m, x, k=0), r"\(?\bk\b\)? must be a whole number >= 1"),
    (lambda m, x: evaluate(m, x, iwae_k=0), r"\biwae_k\b\)? must be a whole number >= 1"),
    (lambda m, x: evaluate(m, x, iwae_k=-2), r"\biwae_k\b\)? must be a whole number >= 1"),
    (lambda m, x: evaluate(m, x, iwae_k=2, seed=-1), r"^seed must be a whole number"),
], ids=["log_likelihood-k", "evaluate-iwae_k-0", "evaluate-iwae_k-negative", "evaluate-seed"])
def test_evaluation_errors_name_the_python_argument(trained, call, match):
    """From Python, messages name the Python argument (the CLI names its flag)."""
    with pytest.raises(PyrovaeError, match=match):
        call(trained.vae, trained.data.test_x[:10])


@pytest.mark.parametrize("bad,match", [
    (dict(epochs=0), r"^epochs must be a whole number >= 1"),
    (dict(lr=-1.0), r"^lr must be a positive number"),
    (dict(hidden=[0]), r"^hidden must be sizes"),
    (dict(likelihood="bernoulli", binarize="none"), "needs binary data"),
    (dict(device="tpu"), r"^device must be cpu, cuda"),
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


# --------------------------------------------------------------------------- a user's own model


USER = dict(batch_size=32, lr=3e-3, binarize="dynamic", progress=False, figures=False)


def fresh(seed=0):
    pyro.set_rng_seed(seed)
    return CondVAE()


def user_state(obj):
    return {**{k: v.detach().clone() for k, v in obj.state_dict().items()},
            "pixel_bias": pyro.param("pixel_bias").detach().clone()}


@pytest.fixture(scope="module")
def small(digits):
    return digits.subset(300, 60)


def test_user_model_trains_checkpoints_and_reloads_identically(tmp_path, small, single_thread):
    obj = fresh()
    run = train(model=obj, data=small, epochs=3, run_dir=tmp_path, kl_schedule="linear", **USER)
    assert run.model is obj and run.inputs == ("x", "y")
    assert run.program.latent == ("code",) and run.program.observed == ("pixels",)
    assert run.program.batch_plate == "batch" and run.program.params == ("pixel_bias",)
    assert run.config.model == "user:tests.test_training.CondVAE"
    rows = run.metrics
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("train_loss", "test_elbo", "test_recon", "test_kl"):
            assert math.isfinite(r[key]), (key, r)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert math.isclose(rows[-1]["test_elbo"], rows[-1]["test_recon"] - rows[-1]["test_kl"],
                        rel_tol=1e-6)
    # the linear KL schedule rises over the first half of the run (30 steps), then stays at 1
    betas = [r["beta"] for r in rows]
    assert 0 < betas[0] < betas[1] == betas[2] == 1.0
    trained_bias = pyro.param("pixel_bias").detach().clone()
    assert trained_bias.abs().max() > 1e-3  # the pyro.param was trained

    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["format"] == "pyrovae-checkpoint-2" and ckpt["epoch"] == 3
    assert ckpt["model_name"] == "user:tests.test_training.CondVAE" and ckpt["spec"] is None
    assert ckpt["inputs"]["fields"] == ["x", "y"]
    assert ckpt["inputs"]["dtypes"] == ["float32", "int64"]
    assert torch.equal(ckpt["state"]["params"]["pixel_bias"], trained_bias)
    assert ckpt["state"]["module"].keys() == obj.state_dict().keys()

    test = run.data.inputs("test", run.inputs)
    pyro.set_rng_seed(5)
    terms = pyrovae.elbo_terms(obj, test)
    ll = pyrovae.log_likelihood(obj, test, 10)
    pyro.set_rng_seed(5)
    summary = pyrovae.evaluate(obj, test, iwae_k=10, seed=0)
    state = user_state(obj)

    pyro.clear_param_store()  # as in a new process: only the checkpoint holds the values
    with pytest.raises(PyrovaeError, match="pass a new instance"):
        load_run(tmp_path, data=False)
    back = load_run(tmp_path, model=fresh(seed=99), data=small)
    assert back.model is not obj and back.inputs == ("x", "y")
    assert torch.equal(back.data.test_x, run.data.test_x)  # held-out data binarized alike
    for key, value in user_state(back.model).items():
        assert torch.equal(value, state[key]), key
    pyro.set_rng_seed(5)
    assert pyrovae.elbo_terms(back.model, test) == terms
    assert torch.equal(pyrovae.log_likelihood(back.model, test, 10), ll)
    pyro.set_rng_seed(5)
    assert pyrovae.evaluate(back.model, test, iwae_k=10, seed=0) == summary
    assert [r["epoch"] for r in back.metrics] == [1, 2, 3]
    # a checkpoint of the user's model cannot be loaded into a differently built one
    pyro.clear_param_store()
    with pytest.raises(PyrovaeError, match="do not fit"):
        load_run(tmp_path, model=CondVAE(hidden=8), data=False)


def test_user_model_resume_continues_exactly(tmp_path, small, single_thread):
    schedule = dict(kl_schedule="linear:steps=15")  # spans both epochs: its state must resume too
    straight = train(model=fresh(), data=small, epochs=2, run_dir=tmp_path / "a", **schedule,
                     **USER)
    want = user_state(straight.model)
    pyro.clear_param_store()  # else the trained pixel_bias in the store would carry on, as in Pyro
    train(model=fresh(), data=small, epochs=1, run_dir=tmp_path / "b", **schedule, **USER)
    with pytest.raises(PyrovaeError, match="trained a user model"):
        train(run_dir=tmp_path / "b", data=small, resume=True, epochs=2, progress=False)
    pyro.clear_param_store()
    resumed = train(model=fresh(seed=7), run_dir=tmp_path / "b", data=small, resume=True, epochs=2,
                    progress=False, figures=False)
    assert [r["epoch"] for r in runs.read_metrics(tmp_path / "b")] == [1, 2]
    got = user_state(resumed.model)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key  # bit for bit
    for a, b in zip(straight.metrics, resumed.metrics, strict=True):
        for key in ("train_loss", "test_elbo", "beta", "step"):
            assert a[key] == b[key], key
