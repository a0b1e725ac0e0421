"""The committed density table: rows a program can check, each in the README and with its samples."""

import importlib.util
import json

from tests.conftest import REPO

RESULTS = REPO / "docs" / "results" / "density"
REQUIRED = {"model", "estimator", "train_minutes", "test_nll", "test_nll_se", "k", "n_test"}


def _report():
    spec = importlib.util.spec_from_file_location("density_report", REPO / "benchmarks" / "density_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_committed_row_follows_the_protocol_and_is_in_the_readme():
    rows = json.loads((RESULTS / "results.json").read_text())
    report = _report()
    readme = (REPO / "README.md").read_text()
    table = (RESULTS / "table.md").read_text()
    assert rows and len({report.row_key(r) for r in rows}) == len(rows)
    for row in rows:
        assert REQUIRED <= row.keys(), sorted(REQUIRED - row.keys())
        assert row["k"] == 5000 and row["n_test"] == 10_000 and row["n_val"] == 10_000
        assert row["n_train"] == 50_000 and row["dataset"] == "fashion-mnist"
        assert 0 < row["test_nll_se"] < 2 and 150 < row["test_nll"] < 400
        # a budget of 60 minutes, checked after each epoch: the last epoch may end past it
        assert row["train_minutes"] <= 61 and 1 <= row["best_epoch"] <= row["epochs"]
        figure = f"**{row['test_nll']:.2f} ± {row['test_nll_se']:.2f}**"
        assert figure in readme, figure
        assert f"{row['test_nll']:.2f}" in table
        assert (RESULTS / "samples" / f"{report.slug(row)}.png").read_bytes()[:4] == b"\x89PNG"
