"""The density protocol script end to end at smoke size: validation split, early stopping and the
best checkpoint, the test set once, a row a program can check."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_density.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_density", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
