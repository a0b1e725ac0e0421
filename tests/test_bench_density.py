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
