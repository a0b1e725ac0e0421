"""Execute every notebook in experiments/ at smoke size (PYROVAE_SMOKE=1)."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "experiments").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "experiments/ should hold at least one notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_at_smoke_size(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_SMOKE", "1")
    monkeypatch.setenv("PYROVAE_RUNS", str(tmp_path))  # notebooks write their runs here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel must be this interpreter (the project's venv), whatever `python` is on PATH
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "experiments")}})
    client.execute()
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
