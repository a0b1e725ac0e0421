"""Run folders: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and ``figures/``.

A checkpoint holds only state dicts, tensors and plain Python data, so it loads with
``torch.load(weights_only=True)`` and opening it never runs code. It is written to a temporary file
and renamed, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from pyrovae.errors import PyrovaeError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
FIGURES = "figures"


def make_run_dir(out: str | os.PathLike | None, prefix: str) -> Path:
    """Create (if needed) and return a run folder; ``out=None`` gives ``runs/<prefix>-<time>``."""
    path = Path(out) if out is not None else Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise PyrovaeError(f"--out {path} exists and is not a folder: choose another path")
    (path / FIGURES).mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise PyrovaeError(f"{path} not found: is this a pyrovae run folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PyrovaeError(f"{path} is not valid JSON ({exc}): restore or delete it") from None


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write the run's ``config.json`` (everything needed to rebuild the model)."""
    write_json(Path(run_dir) / CONFIG, config)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the run's ``config.json``."""
    return read_json(Path(run_dir) / CONFIG)


def append_metrics(run_dir: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON line to the run's ``metrics.jsonl``."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of the run's ``metrics.jsonl`` (empty list when there is none yet)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a write cut short by a kill: the epoch it described is lost
                break
            raise PyrovaeError(f"{path}, line {i + 1}, is not JSON: repair or delete it") from None
    return rows


def truncate_metrics(run_dir: str | os.PathLike, key: str, last: int) -> None:
    """Drop rows whose ``key`` exceeds ``last`` (rows written after the checkpoint a run resumes)."""
    rows = [r for r in read_metrics(run_dir) if r.get(key, 0) <= last]
    path = Path(run_dir) / METRICS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def write_csv(path: str | os.PathLike, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A CSV table with ``columns`` (keys outside them are ignored), one line per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Save ``payload`` (state dicts, tensors, plain data) atomically with ``torch.save``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or unreadable file is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise PyrovaeError(f"no checkpoint at {path}: train first, or pass the run folder")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise PyrovaeError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or ['empty or truncated file'])[0]}): "
            "it is corrupt or not a pyrovae checkpoint"
        ) from None
