"""The research workflow on the command line: config files, --print-config, --version, provenance,
--device auto, resume messages, per-K evaluation files, seeds, tracking."""

import json
import warnings

import pytest
import torch

import pyrovae
from pyrovae import runs
from pyrovae.cli import main

TINY = ["--dataset", "digits", "--epochs", "2", "--limit", "200", "--hidden", "16", "--z-dim", "2",
        "--no-progress"]


def _state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["state"]


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"pyrovae {pyrovae.__version__}"


def test_print_config_fed_back_as_config_gives_the_same_run(tmp_path, capsys):
    flags = [*TINY[:-1], "--kl-schedule", "linear:epochs=1", "--seed", "4", "--lr", "0.002"]
    assert main(["train", *flags, "--print-config"]) == 0
    text = capsys.readouterr().out
    assert 'kl_schedule = "linear:epochs=1"' in text and "z_dim = 2" in text and "lr = 0.002" in text
    assert not (tmp_path / "a").exists()  # nothing trained
    (tmp_path / "exp.toml").write_text(text)
    assert main(["train", *flags, "--no-progress", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--config", str(tmp_path / "exp.toml"), "--no-progress",
                 "--out", str(tmp_path / "b")]) == 0
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    for part in a:
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key  # bit for bit
    assert runs.read_config(tmp_path / "a") == runs.read_config(tmp_path / "b")


def test_config_files_yaml_json_and_flags_override(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text("dataset: digits\nz-dim: 3\nhidden: [8]\nepochs: 1\nlimit: 100\n")
    assert main(["train", "--config", str(tmp_path / "exp.yaml"), "--z-dim", "2", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "z_dim = 2" in text and "hidden = [8]" in text and "epochs = 1" in text
    (tmp_path / "bad.json").write_text('{"zdim": 3}')
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown option 'zdim'" in capsys.readouterr().err
    (tmp_path / "broken.toml").write_text("z_dim = = 3")
    assert main(["train", "--config", str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2


def test_provenance_device_auto_and_nothing_left_to_train(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--device", "auto", "--out", str(out)]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    prov = runs.read_provenance(out)
    assert prov["pyrovae"] == pyrovae.__version__ and prov["torch"] == torch.__version__
    assert prov["pyro"] and prov["python"] and "command" in prov
    assert "provenance" not in runs.read_config(out)  # the training config stays plain
    capsys.readouterr()
    stamp = (out / "checkpoint.pt").stat().st_mtime_ns
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "nothing left to train" in capsys.readouterr().err
    assert (out / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_evaluate_writes_one_file_per_k_with_its_seed_and_a_random_limit(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--iwae-k", "3"]) == 0
    assert main(["evaluate", str(out), "--iwae-k", "4", "--limit", "5", "--seed", "2"]) == 0
    whole = json.loads((out / "eval-K3.json").read_text())
    part = json.loads((out / "eval-K4-n5-seed2.json").read_text())
    assert whole["seed"] == 0 and whole["iwae_k"] == 3 and part["seed"] == 2 and part["n"] == 5


def test_resuming_an_annealed_run_to_more_epochs_warns(tmp_path):
    out = tmp_path / "run"
    pyrovae.train(dataset="digits", limit=100, epochs=1, hidden=[8], z_dim=2, kl_schedule="cyclical",
                  run_dir=out, progress=False, figures=False)
    with pytest.warns(UserWarning, match="keeps the length"):
        pyrovae.train(run_dir=out, resume=True, epochs=2, progress=False, figures=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyrovae.train(dataset="digits", limit=100, epochs=1, hidden=[8], z_dim=2, run_dir=tmp_path / "c",
                      progress=False, figures=False)
        pyrovae.train(run_dir=tmp_path / "c", resume=True, epochs=2, progress=False, figures=False)


def test_compare_seeds_and_tracking_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", "digits", "--limit", "100", "--hidden", "8", "--z-dim", "2",
                 "--estimators", "trace", "--epochs", "1", "--iwae-k", "3", "--curve-k", "2", "--draws",
                 "2", "--grad-batch", "4", "--snr-k", "1", "--seeds", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "seed 1" in captured.err  # progress lines
    assert "±" in (out / "compare.md").read_text()
    run = tmp_path / "tracked"
    assert main(["train", *TINY, "--tracking", "jsonl", "--track-every", "2", "--out", str(run)]) == 0
    assert [r["step"] for r in pyrovae.tracking.read_steps(run)] == list(range(2, 15, 2))  # 7 steps an epoch
    assert main(["train", *TINY, "--tracking", "wandb", "--out", str(tmp_path / "w")]) == 2
