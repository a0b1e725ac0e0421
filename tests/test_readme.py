"""The README's complete user model runs as written: train, evaluate, sample, gradients, reload."""

import contextlib
import io
import os
import re

from tests.conftest import REPO


def _block(section: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(section)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_readme_user_model_goes_through_the_library(tmp_path, single_thread, monkeypatch):
    code = _block("## Your own Pyro model")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace: dict = {"__name__": "readme_example"}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(code, "README.md", "exec"), namespace)
    run, same = namespace["run"], namespace["same"]
    assert os.path.isfile(tmp_path / "runs" / "vamp" / "checkpoint.pt")
    assert len(run.metrics) == 3 and same.metrics == run.metrics
    assert namespace["images"].shape == (16, 1, 8, 8)
    assert namespace["loc"].shape == (len(run.data.test_x), 8)
    assert "pseudo_inputs" in run.program.params  # the pyro.param was found and trained
    printed = out.getvalue()
    assert "'log_px'" in printed and "monte carlo" in printed
