"""One job's MLflow child run: what a job logs (metrics, tags, files, datasets, its model), each
event journaled first, then sent through the pipeline's Tracker (kazhpc.tracking.live)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kazhpc.tracking.lineage import dataset_input, register_model, tag_model


class JobRun:
    """Logging for one job's child run. Every call is journaled first, then sent.

    ``tracker``: the pipeline's kazhpc.tracking.live.Tracker (not imported here: it makes
    JobRuns). ``uid`` is the run's journal id; without one (a JobRun made for a run found in runs.json)
    the journal attributes the events to the latest run started under ``key``.
    """

    def __init__(self, tracker: Any, key: str, run_id: str | None, uid: str | None = None):
        self.tracker = tracker
        self.key = key
        self.run_id = run_id
        self.uid = uid

    @property
    def active(self) -> bool:
        return bool(self.key)

    def _record(self, event: str, **fields: Any) -> None:
        self.tracker._record({"event": event, "key": self.key, **({"run": self.uid} if self.uid else {}), **fields})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items()}  # a tensor's value, not its repr, in the journal
        self._record("metrics", metrics=values, step=step)
        if self.run_id:
            from mlflow.entities import Metric

            items = [Metric(k, v, now, step or 0) for k, v in values.items()]
            self.tracker._send("log_batch", self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.active:
            return
        self._record("tags", tags=tags)
        if self.run_id:
            from mlflow.entities import RunTag

            self.tracker._send("log_batch", self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder that lives in the run directory (the journal keeps its path)."""
        if not self.active:
            return
        self._record("artifact", path=str(Path(path).absolute()), artifact_path=artifact_path)
        if self.run_id:
            method = "log_artifacts" if Path(path).is_dir() else "log_artifact"
            self.tracker._send(method, self.run_id, str(path), artifact_path)

    def log_dataset(self, record: dict[str, Any]) -> None:
        """A data set this job read or wrote (a :mod:`kazhpc.tracking.lineage` record), as the run's input."""
        if not self.active:
            return
        self._record("dataset", dataset=record)
        if self.run_id:
            self.tracker._send("log_inputs", self.run_id, datasets=[dataset_input(record)])

    def log_model(self, name: str, path: Path, tags: dict[str, str], model_type: str = "peft-adapter") -> dict[str, str] | None:
        """Log an MLflow model folder (lineage.save_transformers_model) as this run's model and
        register it as a version of ``name``; return its {name, uid} (for tag_model), None on other ranks."""
        if not self.active:
            return None
        record = {"name": name, "uid": uuid.uuid4().hex, "stage": self.key.removeprefix("job:"), "model_type": model_type,
                  "path": str(Path(path).absolute()), "tags": {k: str(v) for k, v in tags.items()}}
        self._record("model", model=record)
        if self.run_id:
            experiment_id = self.tracker._experiment_id()
            if experiment_id is not None:
                self.tracker._call(lambda client: register_model(client, experiment_id, self.run_id, record))
        return {"name": name, "uid": record["uid"]}

    def tag_model(self, model: dict[str, str], tags: dict[str, Any]) -> None:
        """Tags (scores) on a registered model version that an earlier job logged (its {name, uid})."""
        if not self.active:
            return
        tags = {k: str(v) for k, v in tags.items()}
        self._record("model_tags", model=model, tags=tags)
        if self.run_id:
            self.tracker._call(lambda client: tag_model(client, model["name"], model["uid"], tags))

    def finish(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        self._record("end", status=status)
        if self.run_id:
            self.tracker._send("set_terminated", self.run_id, status=status)
