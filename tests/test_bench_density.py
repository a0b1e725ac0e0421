"""The density protocol script end to end at smoke size: validation split, early stopping and the
best checkpoint, the test set once, a row a program can check."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrovae
from pyrovae.models.mixture import cluster_purity
from pyrovae.training.callbacks import load_best
from pyrovae.training.loop import prepare_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _script("bench_density")


def test_one_row_of_the_table_at_smoke_size(bench, tmp_path, single_thread):
    record = tmp_path / "results.json"
    args = ["--dataset", "digits", "--hidden", "32", "--z-dim", "3", "--val", "200", "--iwae-k", "20",
            "--max-epochs", "4", "--warmup", "2", "--threads", "1", "--out", str(tmp_path / "run"),
            "--record", str(record)]
    row = bench.main(args)
    assert row["n_val"] == 200 and row["n_train"] == 1617 - 200 and row["n_test"] == 180
    assert row["epochs"] == 4 and 1 <= row["best_epoch"] <= 4
    assert row["test_nll"] > 0 and row["test_nll_se"] > 0 and row["k"] == 20
    rows = json.loads(record.read_text())
    assert [r["test_nll"] for r in rows] == [row["test_nll"]]
    again = bench.main(args)  # a finished run is not trained again; the row replaces the old one
    assert again["epochs"] == 4 and len(json.loads(record.read_text())) == 1


def test_the_report_tables_rows_best_first_and_draws_both_figures(bench, tmp_path, single_thread):
    record, folders = tmp_path / "results.json", []
    for model, estimator in [("vae", "iwae:3"), ("hvae", "trace")]:
        folders.append(tmp_path / model)
        bench.main(["--dataset", "digits", "--model", model, "--estimator", estimator, "--hidden", "16",
                    "--z-dim", "2", "--val", "200", "--iwae-k", "10", "--max-epochs", "2", "--warmup", "1",
                    "--threads", "1", "--out", str(folders[-1]), "--record", str(record)])
    rows = sorted(json.loads(record.read_text()), key=lambda r: r["test_nll"])
    out = tmp_path / "report"
    text = _script("density_report").main(["--results", str(record), "--runs", *map(str, folders),
                                           "--out", str(out)])
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split("|")[1].strip(" `") for line in lines] == [r["model"] for r in rows]
    assert f"{rows[0]['test_nll']:.2f}" in lines[0] and "228.70" in text
    assert (out / "table.md").read_text() == text
    for figure in ("nll-vs-minutes.png", "samples.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    # paired on the same test images: the per-image values kept beside the table give back each
    # row's NLL, and the difference's error is the per-image one, worked out here by hand
    report = _script("density_report")
    kept = [np.load(out / "log_px" / f"{report.slug(r)}.npy") for r in rows]
    for r, folder, values in zip(rows, sorted(folders, key=lambda f: f.name != rows[0]["model"]), kept,
                                 strict=True):
        assert -values.mean() == pytest.approx(r["test_nll"], abs=1e-9) and len(values) == r["n_test"]
        assert np.array_equal(values, torch.load(folder / "test-log-px.pt").numpy())
    diff = kept[0] - kept[1]
    se = math.sqrt(sum((d - diff.mean()) ** 2 for d in diff) / (len(diff) - 1) / len(diff))
    [(best, _, _), (other, d, got_se)] = report.paired(rows, out)
    assert best is rows[0] and other is rows[1]
    assert d == pytest.approx(rows[1]["test_nll"] - rows[0]["test_nll"], abs=1e-9)
    assert got_se == pytest.approx(se, rel=1e-9)
    assert f"+{d:.2f} ± {se:.2f}." in text


def test_rows_that_differ_only_in_the_network_are_both_kept_and_drawn(bench, tmp_path, single_thread):
    record, folders = tmp_path / "results.json", []
    for net in ("mlp", "gated"):
        folders.append(tmp_path / net)
        bench.main(["--dataset", "digits", "--net", net, "--estimator", "iwae:3", "--hidden", "16",
                    "--z-dim", "2", "--val", "200", "--iwae-k", "10", "--max-epochs", "2", "--warmup", "1",
                    "--threads", "1", "--out", str(folders[-1]), "--record", str(record)])
    rows = json.loads(record.read_text())
    assert sorted(r["net"] for r in rows) == ["gated", "mlp"]
    report = _script("density_report")
    text = report.main(["--results", str(record), "--runs", *map(str, folders), "--out", str(tmp_path / "r")])
    assert "(mlp)" in text and "(gated)" in text
    legend = report.curve_figure(rows, tmp_path / "r").axes[0].get_legend().get_texts()
    legend = [t.get_text() for t in legend]
    for net in ("mlp", "gated"):  # each row has its own validation curve: its folder was found
        assert f"vae, iwae:3, {net}: validation -ELBO" in legend
    titles = sorted(ax.get_title() for ax in report.samples_figure(rows, tmp_path / "r").axes)
    assert [t.rsplit(":", 1)[0] for t in titles] == ["vae, iwae:3, gated", "vae, iwae:3, mlp"]


def test_a_row_keeps_its_curve_and_samples_after_its_run_folder_is_gone(bench, tmp_path, single_thread,
                                                                       monkeypatch):
    record, out = tmp_path / "results.json", tmp_path / "report"
    folders, scored = {}, []

    def recording_purity(model, x, y):
        scored.append((x, y))
        return cluster_purity(model, x, y)

    monkeypatch.setattr(bench, "cluster_purity", recording_purity)
    for model in ("vae", "gmvae"):
        folders[model] = tmp_path / model
        estimator = "enum" if model == "gmvae" else "trace"
        bench.main(["--dataset", "digits", "--model", model, "--estimator", estimator, "--hidden", "16",
                    "--z-dim", "2", "--val", "200", "--iwae-k", "10", "--max-epochs", "2", "--warmup", "1",
                    "--threads", "1", "--out", str(folders[model]), "--record", str(record)])
    rows = json.loads(record.read_text())
    gmvae = next(r for r in rows if r["model"] == "gmvae")
    chosen = load_best(folders["gmvae"], data=pyrovae.load_dataset("digits").validation(200, seed=0))
    test = prepare_data(chosen.config, pyrovae.load_dataset("digits"))
    assert gmvae["test_purity"] == cluster_purity(chosen.model, test.test_x, test.test_y)  # the best, on test
    [(x, y)] = scored  # the binarized test images with their own labels, in their order
    assert torch.equal(x, test.test_x) and torch.equal(y, test.test_y)
    assert "test_purity" not in next(r for r in rows if r["model"] == "vae")
    report = _script("density_report")
    report.main(["--results", str(record), "--runs", *map(str, folders.values()), "--out", str(out)])
    curve = (out / "curves" / f"{report.slug(gmvae)}.csv").read_text().splitlines()
    assert curve[0] == "epoch,minutes,val_elbo" and len(curve) == 1 + gmvae["epochs"]
    assert float(curve[-1].split(",")[2]) == pytest.approx(
        [m["test_elbo"] for m in report.runs.read_metrics(folders["gmvae"])][-1], abs=1e-3)
    shutil.rmtree(folders["vae"])
    text = report.main(["--results", str(record), "--runs", str(folders["gmvae"]), "--out", str(out)])
    assert f"gmvae, enum {gmvae['test_purity']:.3f}" in text
    legend = [t.get_text() for t in report.curve_figure(rows, out).axes[0].get_legend().get_texts()]
    assert "vae, trace: validation -ELBO" in legend and "gmvae, enum: validation -ELBO" in legend
    assert sorted(ax.get_title().rsplit(":", 1)[0] for ax in report.samples_figure(rows, out).axes) == [
        "gmvae, enum", "vae, trace"]


def test_row_file_names_are_plain_and_tell_rows_apart(bench):
    report = _script("density_report")
    row = {"model": "vamp:components=50", "estimator": "iwae:5", "net": "gated", "hidden": [300, 300],
           "z_dim": 40}
    assert report.slug(row) == "vamp_components_50-iwae_5-gated-300x300-z40"
    assert report.slug({**row, "hidden": [300]}) != report.slug(row) != report.slug({**row, "net": "mlp"})


def test_the_report_refuses_an_empty_results_file(tmp_path):
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(SystemExit, match="holds no rows"):
        _script("density_report").main(["--results", str(tmp_path / "results.json"), "--out", str(tmp_path)])


def test_a_run_whose_row_is_not_recorded_is_named_and_left_out(bench, tmp_path, single_thread, capsys):
    folders = {}
    for model in ("vae", "hvae"):  # each recorded in a results file of its own
        folders[model] = tmp_path / model
        bench.main(["--dataset", "digits", "--model", model, "--estimator", "trace", "--hidden", "16",
                    "--z-dim", "2", "--val", "200", "--iwae-k", "5", "--max-epochs", "1", "--warmup", "1",
                    "--threads", "1", "--out", str(folders[model]),
                    "--record", str(tmp_path / f"{model}.json")])
    report, out = _script("density_report"), tmp_path / "report"
    capsys.readouterr()
    report.main(["--results", str(tmp_path / "vae.json"), "--runs", *map(str, folders.values()),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert f"{folders['hvae']}: its row is not in {tmp_path / 'vae.json'} yet" in err
    assert f"{folders['vae']}:" not in err and err.count("not in") == 1
    [vae] = json.loads((tmp_path / "vae.json").read_text())
    assert sorted(p.name for p in (out / "curves").iterdir()) == [f"{report.slug(vae)}.csv"]
