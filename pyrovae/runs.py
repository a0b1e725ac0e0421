"""Run folders: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and ``figures/``.

A checkpoint holds only state dicts, tensors and plain Python data, so it loads with
``torch.load(weights_only=True)`` and opening it never runs code. Every file is written to a
temporary file of this process and renamed, so a crash (or a full disk) mid-write leaves the
previous version intact. One process at a time writes a run folder: it holds the folder's lock
(:func:`lock`), and a second one is refused at once.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pyrovae.errors import PyrovaeError

try:
    import fcntl
except ImportError:  # Windows: the lock is a file created exclusively
    fcntl = None

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
FIGURES = "figures"
LOCK = ".lock"
STAGING = ".staging-"  # a replacing run's files until its first checkpoint
REPLACED = ".replaced-"  # the replaced run's files while the new ones move in
MARKER = {"pyrovae": "run-1"}  # in config.json: this folder is a pyrovae run
PROVENANCE = "provenance"  # in config.json: versions, git commit, command line
# what pyrovae's trackers (pyrovae.tracking) keep in a run folder; they manage these themselves
TRACKER_FILES = ("steps.jsonl", "mlruns", "mlflow.json", "tensorboard")
_LEGACY_KEYS = {"dataset", "model", "estimator", "kl_schedule", "eval_held_out"}  # before MARKER


def write_error(path: str | os.PathLike, exc: OSError) -> PyrovaeError:
    """A one-line error for a failed write of ``path``, with the fix its ``errno`` calls for."""
    blocking = _file_in_the_way(Path(path).parent) if exc.errno == errno.ENOTDIR else None
    if blocking is not None:
        return PyrovaeError(f"cannot write {path}: {blocking} is a file, not a folder: choose "
                            "another path")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or raise the quota) and run again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose a folder you can write to"
    else:
        fix = "check the path and free disk space"
    return PyrovaeError(f"cannot write {path} ({exc.strerror or exc}): {fix}; files written before "
                        "are intact")


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest ``path`` or ancestor that exists and is not a folder."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` and its parents; a file in the way is a clear error."""
    path = Path(path)
    blocking = _file_in_the_way(path)
    if blocking is not None:
        raise PyrovaeError(f"cannot create folder {path}: {blocking} is a file, not a folder: "
                           "choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


def make_run_dir(out: str | os.PathLike | None, prefix: str) -> Path:
    """Create (if needed) and return a run folder; ``out=None`` gives ``runs/<prefix>-<time>``."""
    path = Path(out) if out is not None else Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise PyrovaeError(f"--out {path} exists and is not a folder: choose another path")
    ensure_dir(path / FIGURES)
    return path


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")  # per process: writers never collide


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file, flushed to disk, then renamed."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not publish a file whose data is not on disk
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise PyrovaeError(f"{path} not found: is this a pyrovae run folder?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PyrovaeError(f"{path} is not valid JSON ({exc}): restore or delete it") from None


def _git_commit() -> dict[str, Any] | None:
    """The commit of the pyrovae source tree (an editable or source install), and whether it has
    uncommitted changes; ``None`` outside a git checkout or without git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance() -> dict[str, Any]:
    """What produced a run: pyrovae, torch, Pyro and Python versions, the git commit of pyrovae's
    source when there is one, and the command line."""
    import platform

    import pyro

    from pyrovae import __version__

    return {"pyrovae": __version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "python": platform.python_version(), "git": _git_commit(),
            "command": shlex.join(sys.argv)}


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write the run's ``config.json`` (everything needed to rebuild the model), marked as a
    pyrovae run, with its :func:`provenance` under ``"provenance"``."""
    write_json(Path(run_dir) / CONFIG, {**config, PROVENANCE: provenance(), **MARKER})


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the run's ``config.json`` (the training config: no marker, no provenance)."""
    config = read_json(Path(run_dir) / CONFIG)
    if not isinstance(config, dict):
        return config
    return {k: v for k, v in config.items() if k not in MARKER and k != PROVENANCE}


def read_provenance(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The :func:`provenance` recorded in the run's ``config.json`` (``None`` for older runs)."""
    config = read_json(Path(run_dir) / CONFIG)
    return config.get(PROVENANCE) if isinstance(config, dict) else None


def append_metrics(run_dir: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON line to the run's ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as exc:
        raise write_error(path, exc) from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (empty list when there is none yet); a last line cut short
    by a kill is left out, a bad line elsewhere is a clear error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a write cut short by a kill: the row it described is lost
                break
            raise PyrovaeError(f"{path}, line {i + 1}, is not JSON: repair or delete it") from None
    return rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of the run's ``metrics.jsonl`` (empty list when there is none yet)."""
    return read_jsonl(Path(run_dir) / METRICS)


def truncate_metrics(run_dir: str | os.PathLike, key: str, last: int) -> None:
    """Drop rows whose ``key`` exceeds ``last`` (rows written after the checkpoint a run resumes)."""
    rows = [r for r in read_metrics(run_dir) if r.get(key, 0) <= last]
    write_bytes(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def write_csv(path: str | os.PathLike, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A CSV table with ``columns`` (keys outside them are ignored), one line per row."""
    path = Path(path)
    ensure_dir(path.parent)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, text.getvalue().encode())


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Save ``payload`` (state dicts, tensors, plain data) atomically with ``torch.save``.

    A failed write (full disk, quota, read-only folder) leaves no temporary file and the previous
    checkpoint in place, and raises :class:`~pyrovae.errors.PyrovaeError`.
    """
    buffer = io.BytesIO()  # serialise in memory: a failed disk write is then a plain OSError
    try:
        torch.save(payload, buffer)
    except OSError as exc:
        raise write_error(path, exc) from None
    write_bytes(path, buffer.getbuffer())


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


# ---- one writer per run folder ------------------------------------------------------------------


@contextlib.contextmanager
def lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``RUN/.lock`` exclusively for the block (the folder must exist).

    Another process (or another call in this one) that asks for the lock meanwhile gets a
    :class:`~pyrovae.errors.PyrovaeError` at once. The lock is ``fcntl.flock``, released by the
    system even when the holder is killed; without ``fcntl`` it is the file itself, created
    exclusively and removed on release.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    flags = os.O_RDWR | os.O_CREAT | (0 if fcntl is not None else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise _busy(run_dir, path) from None
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(run_dir, path) from None
            os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield run_dir
    finally:
        os.close(fd)  # releases the flock
        if fcntl is None:
            path.unlink(missing_ok=True)


def _busy(run_dir: Path, path: Path) -> PyrovaeError:
    try:
        pid = path.read_text().strip() or "unknown"
    except OSError:
        pid = "unknown"
    stale = "" if fcntl is not None else f" (if no pyrovae process runs, delete {path})"
    return PyrovaeError(f"{run_dir} is being written by another pyrovae process (pid {pid}): wait for "
                        f"it to finish, or choose another folder{stale}")


# ---- what a folder holds, and replacing a run -----------------------------------------------------


def _ours(entry: Path) -> bool:
    """Files pyrovae leaves in a folder it has not written a run into yet."""
    if entry.name in (LOCK, *TRACKER_FILES) or entry.name.startswith((STAGING, REPLACED)):
        return True
    return entry.name == FIGURES and entry.is_dir() and not any(entry.iterdir())


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a pyrovae run: a marked ``config.json``, or (runs written before the
    marker) a training config beside a checkpoint."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    if all(config.get(k) == v for k, v in MARKER.items()):
        return True
    legacy = _LEGACY_KEYS <= set(config) or config.get("command") == "toy"
    return legacy and (path / CHECKPOINT).is_file()


def folder_state(path: str | os.PathLike) -> str:
    """``"new"`` (missing, or holding nothing pyrovae would replace), ``"run"`` (a pyrovae run
    without a checkpoint, such as one that diverged in its first epoch), ``"trained"`` (a pyrovae
    run with a checkpoint) or ``"foreign"`` (a folder with other files)."""
    path = Path(path)
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise PyrovaeError(f"{path} exists and is not a folder: choose another path")
    if all(_ours(entry) for entry in path.iterdir()):
        return "new"
    if not is_run_dir(path):
        return "foreign"
    return "trained" if (path / CHECKPOINT).exists() else "run"


def remove_leftovers(run_dir: str | os.PathLike) -> None:
    """Delete staging folders that killed processes left behind (call with the lock held)."""
    for entry in Path(run_dir).iterdir():
        if entry.is_dir() and entry.name.startswith((STAGING, REPLACED)):
            shutil.rmtree(entry, ignore_errors=True)


def stage(run_dir: str | os.PathLike) -> Path:
    """A new, empty folder inside ``run_dir`` where a replacing run writes until :func:`commit`."""
    return make_run_dir(Path(run_dir) / f"{STAGING}{os.getpid()}", "")


def commit(run_dir: str | os.PathLike, staging: str | os.PathLike) -> None:
    """Replace the run in ``run_dir`` by the one in ``staging`` (which holds its first checkpoint).

    The old files move aside, the new ones in, the new checkpoint last: ``run_dir`` always holds a
    checkpoint, its own or the new one. Trackers' files stay (a tracker replaces its own record when
    it starts). Call with the lock held.
    """
    run_dir, staging = Path(run_dir), Path(staging)
    aside = run_dir / f"{REPLACED}{os.getpid()}"
    keep = (LOCK, CHECKPOINT, staging.name, aside.name, *TRACKER_FILES)
    try:
        aside.mkdir(exist_ok=True)
        for entry in list(run_dir.iterdir()):
            if entry.name not in keep:
                os.replace(entry, aside / entry.name)
        for entry in list(staging.iterdir()):
            if entry.name not in (LOCK, CHECKPOINT):
                os.replace(entry, run_dir / entry.name)
        os.replace(staging / CHECKPOINT, run_dir / CHECKPOINT)
    except OSError as exc:
        raise write_error(run_dir, exc) from None
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def is_staging(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder made by :func:`stage`."""
    return Path(path).name.startswith(STAGING)
