"""The density protocol script end to end at smoke size: validation split, early stopping and the
best checkpoint, the test set once, a row a program can check."""

import importlib.util
import json
from pathlib import Path

import pytest

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
    found = {bench.row_key(report.runs.read_config(f)): f for f in folders}
    legend = [t.get_text() for t in report.curve_figure(rows, found).axes[0].get_legend().get_texts()]
    for net in ("mlp", "gated"):  # each row has its own validation curve: its folder was found
        assert f"vae, iwae:3, {net}: validation -ELBO" in legend
    titles = sorted(ax.get_title() for ax in report.samples_figure(rows, found).axes)
    assert [t.rsplit(":", 1)[0] for t in titles] == ["vae, iwae:3, gated", "vae, iwae:3, mlp"]


def test_the_report_refuses_an_empty_results_file(tmp_path):
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(SystemExit, match="holds no rows"):
        _script("density_report").main(["--results", str(tmp_path / "results.json"), "--out", str(tmp_path)])
