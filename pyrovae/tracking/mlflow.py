"""MLflow runs in a local store inside the run folder, ``RUN/mlruns`` (experiment ``"pyrovae"``).

MLflow 3 keeps the file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE``
is set; its database stores need SQLAlchemy, which ``mlflow-skinny`` lacks. The file store works
offline with either package, so this tracker opts in for its own client only. The MLflow run id is
kept in ``RUN/mlflow.json``; a resumed run continues that MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from pyrovae import runs
from pyrovae.errors import PyrovaeError
from pyrovae.tracking.base import DEFAULT_EVERY, Tracker, check_every, flatten, image_grid, numbers

STORE = "mlruns"
STATE = "mlflow.json"
EXPERIMENT = "pyrovae"
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def _mlflow() -> ModuleType:
    try:
        import mlflow
    except ImportError:
        raise PyrovaeError("tracking with mlflow needs the mlflow package: pip install mlflow-skinny "
                           "(or pyrovae[tracking])") from None
    return mlflow


def tracking_uri(run_dir: str | os.PathLike) -> str:
    """The MLflow tracking URI of the store in ``run_dir`` (``file:///.../RUN/mlruns``)."""
    return (Path(run_dir) / STORE).resolve().as_uri()


@contextlib.contextmanager
def file_store_allowed() -> Iterator[None]:
    """Within the block, MLflow builds file stores (it caches each store by URI afterwards)."""
    before = os.environ.get(ALLOW_FILE_STORE)
    os.environ[ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ALLOW_FILE_STORE]
        else:
            os.environ[ALLOW_FILE_STORE] = before


def client(run_dir: str | os.PathLike) -> Any:
    """An ``MlflowClient`` on the store in ``run_dir``."""
    mlflow = _mlflow()
    uri = tracking_uri(run_dir)
    with file_store_allowed():
        if not (Path(run_dir) / STORE).is_dir():
            # MLflow caches one store per URI, and only a store's constructor lays out its folder:
            # lay it out again where it was deleted after a first use in this process
            from mlflow.store.tracking.file_store import FileStore

            FileStore(uri, uri)
        return mlflow.tracking.MlflowClient(tracking_uri=uri)


class MLflowTracker(Tracker):
    """Params from the flattened config, ``step/<name>`` and ``epoch/<name>`` metrics against the
    optimizer step, image grids as PNG artifacts under ``images/<name>/``."""

    name = "mlflow"

    def __init__(self, every: int = DEFAULT_EVERY) -> None:
        self.every = check_every(every)
        self._mlflow = _mlflow()  # fail before training when the package is missing
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run_dir: str | os.PathLike, config: Mapping[str, Any], *, step: int = 0) -> None:
        run_dir = Path(run_dir)
        self.client = client(run_dir)
        self.run_id = self._resumed(run_dir) if step > 0 else None
        if self.run_id is None:
            self.run_id = self._new_run(run_dir)
            runs.write_json(run_dir / STATE, {"run_id": self.run_id, "experiment": EXPERIMENT})
        self._log_params(flatten(config))

    def _resumed(self, run_dir: Path) -> str | None:
        """The stored run id, set running again, if the store still holds that run."""
        state = run_dir / STATE
        if not state.is_file():
            return None
        try:
            run_id = runs.read_json(state).get("run_id")
        except PyrovaeError:
            return None  # an unreadable record: start a new MLflow run rather than stop tracking
        if not isinstance(run_id, str):
            return None
        try:
            self.client.get_run(run_id)
        except self._mlflow.exceptions.MlflowException:
            return None  # the store was deleted or moved: start a new MLflow run
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _new_run(self, run_dir: Path) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else self.client.create_experiment(EXPERIMENT)
        return self.client.create_run(experiment, run_name=run_dir.resolve().name).info.run_id

    def _log_params(self, params: dict[str, Any]) -> None:
        """Params new to the run, cut to MLflow's lengths (quietly: MLflow itself logs a warning per
        value, or raises under ``MLFLOW_TRUNCATE_LONG_VALUES=false``). MLflow forbids changing a
        param, so a value that a resume changed (``epochs``, ``lr``) becomes tag ``resumed.<name>``."""
        from mlflow.entities import Param
        from mlflow.utils import validation as limits

        logged = self.client.get_run(self.run_id).data.params
        new, changed = [], {}
        for key, value in params.items():
            key, text = key[:limits.MAX_ENTITY_KEY_LENGTH], str(value)[:limits.MAX_PARAM_VAL_LENGTH]
            if key not in logged:
                new.append(Param(key, text))
            elif logged[key] != text:
                changed[f"resumed.{key}"[:limits.MAX_ENTITY_KEY_LENGTH]] = text
        if new:
            self.client.log_batch(self.run_id, params=new)  # the client splits it into batches
        for key, text in changed.items():
            self.client.set_tag(self.run_id, key, text[:limits.MAX_TAG_VAL_LENGTH])

    def _log_metrics(self, prefix: str, step: int, scalars: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}/{key}", value, now, step) for key, value in numbers(scalars).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_step(self, step: int, scalars: Mapping[str, float], *, epoch: int | None = None) -> None:
        if self.run_id is not None and self.due(step):
            self._log_metrics("step", step, scalars)

    def log_epoch(self, epoch: int, step: int, scalars: Mapping[str, Any]) -> None:
        if self.run_id is not None:
            self._log_metrics("epoch", step, scalars)

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        if self.run_id is None:
            return
        from torchvision.utils import save_image

        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "images"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{safe}-step{step:08d}.png"
            save_image(image_grid(images), path)
            self.client.log_artifact(self.run_id, str(path), artifact_path=f"images/{safe}")

    def close(self, failed: bool = False) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
            self.run_id = None
