"""Replaying a journal into one store, sending only what the store lacks (used by ``sync``).

Runs are found by their ``kazhpc.journal_id`` tag; params, tags, metric points, files and end
states the store holds already are not sent again.
"""

from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazhpc.tracking.journal import Journal, start_uid
from kazhpc.tracking.lineage import dataset_input, dataset_key, register_model, stored_datasets, tag_model
from kazhpc.tracking.live import JOURNAL_ID_TAG, journal_id_filter, param_batches

log = logging.getLogger("kazhpc.tracking")  # one logger for the package, as when it was one module

#: MLflow's limit of metrics in one log_batch call.
MAX_METRICS_PER_BATCH = 1000


def _value(value: float) -> Any:
    """A metric value as a set member (NaN equal to NaN)."""
    value = float(value)
    return "nan" if math.isnan(value) else value


@dataclass
class _Stored:
    """What a store holds of one run, as far as sync needs to know (a run created now holds nothing)."""

    new: bool
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: set[str] = field(default_factory=set)  # keys with at least one point
    status: str = "RUNNING"
    ended: bool = False
    history: dict[str, set[tuple[int, Any]]] = field(default_factory=dict)  # fetched per key when needed
    files: dict[str, int] | None = None  # artifact path -> size; fetched when needed
    datasets: set[tuple[str, str, str]] = field(default_factory=set)  # (name, digest, context) of its inputs


class Replay:
    """Sends journal events into one store, skipping what the store holds already."""

    def __init__(self, client: Any, experiment_id: str, run_dir: Path, fresh: bool):
        self.client = client
        self.experiment_id = experiment_id
        self.run_dir = run_dir
        self.fresh = fresh  # a new experiment: no run of this journal can be there
        self.starts: dict[str, tuple[dict[str, Any], str | None]] = {}  # uid -> (start event, parent uid)
        self.latest: dict[str, str] = {}  # journal key -> uid of its latest start
        self.ids: dict[str, str] = {}  # uid -> run id in the store
        self.stored: dict[str, _Stored] = {}  # run id -> what the store holds
        self.pending: list[Any] = []  # metrics for one log_batch call
        self.pending_run: str | None = None
        self.line = 0
        self.last_end: dict[str | None, int] = {}  # uid -> line of its last end event
        self.created = self.sent = self.writes = self.orphans = 0

    # -- what the store has ---------------------------------------------------------------------
    def _adopt(self, uid: str, run: Any) -> str:
        self.ids[uid] = run.info.run_id
        self.stored[run.info.run_id] = _Stored(
            new=False,
            params=dict(run.data.params),
            tags=dict(run.data.tags),
            metrics=set(run.data.metrics),
            status=run.info.status,
            ended=run.info.status != "RUNNING" and run.info.end_time is not None,
            datasets=stored_datasets(run),
        )
        return run.info.run_id

    def resume(self, record: dict[str, Any] | None, lines: int, where: str) -> int:
        """Adopt the runs an earlier sync recorded; return the journal lines it uploaded (0: all again)."""
        from mlflow.exceptions import MlflowException

        if self.fresh or not record:
            return 0
        if not isinstance(record.get("runs"), dict) or not isinstance(record.get("lines"), int):
            return 0
        if record["lines"] > lines:
            log.warning("%s: the journal is shorter than when it was synced; checking every line again", where)
            return 0
        for uid, run_id in record["runs"].items():
            try:
                run = self.client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                run = None
            if run is None or run.info.lifecycle_stage == "deleted":
                log.warning("%s: run %s is no longer in the store; checking every journal line again", where, run_id)
                self.ids.clear()
                self.stored.clear()
                return 0
            self._adopt(uid, run)
        return record["lines"]

    def _history(self, run_id: str, key: str) -> set[tuple[int, Any]]:
        stored = self.stored[run_id]
        if key not in stored.history:
            points = set()
            if key in stored.metrics:
                points = {(m.step, _value(m.value)) for m in self.client.get_metric_history(run_id, key)}
            stored.history[key] = points
        return stored.history[key]

    def _files(self, run_id: str, path: str | None = None) -> dict[str, int]:
        found: dict[str, int] = {}
        for info in self.client.list_artifacts(run_id, path):
            if info.is_dir:
                found.update(self._files(run_id, info.path))
            else:
                found[info.path] = info.file_size
        return found

    # -- sending --------------------------------------------------------------------------------
    def _write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        self.writes += 1
        return result

    def flush(self) -> None:
        if self.pending:
            self._write("log_batch", self.pending_run, metrics=self.pending)
            self.pending = []

    def run_id(self, uid: str) -> str:
        """The store's run for this journal id: known, found by its tag, or created now."""
        if uid in self.ids:
            return self.ids[uid]
        event, parent_uid = self.starts[uid]
        if not self.fresh:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=journal_id_filter(uid), max_results=1,
                order_by=["attributes.start_time ASC"],
            )
            if found:
                return self._adopt(uid, found[0])
        tags = {k: str(v) for k, v in event["tags"].items()}
        tags.update({JOURNAL_ID_TAG: uid, "kazhpc.synced_from": str(self.run_dir)})
        if parent_uid is not None:
            tags["mlflow.parentRunId"] = self.run_id(parent_uid)
        run = self._write(
            "create_run", self.experiment_id, start_time=int(event["time"] * 1000), tags=tags, run_name=event["name"]
        )
        self.created += 1
        self.ids[uid] = run.info.run_id
        self.stored[run.info.run_id] = _Stored(new=True, tags=tags)
        return run.info.run_id

    def upload(self, journal: Journal, done: int) -> None:
        """Send the events after line ``done`` (the lines before only say which run is which)."""
        latest: dict[str, str] = {}
        for number, event in journal.events:  # a run's final state is its last end (a resumed job ends twice)
            if event["event"] == "start":
                latest[event["key"]] = start_uid(event, number, self.run_dir)
            elif event["event"] == "end":
                self.last_end[event.get("run") or latest.get(event["key"])] = number
        for number, event in journal.events:
            self.line = number
            kind, key = event["event"], event["key"]
            if kind == "start":
                uid = start_uid(event, number, self.run_dir)
                parent = self.latest.get(event["parent"]) if event.get("parent") else None
                self.starts[uid] = (event, parent)
                self.latest[key] = uid
            else:
                uid = event.get("run") or self.latest.get(key)
            if number <= done:
                continue
            if uid not in self.starts:
                self.orphans += 1  # e.g. an event of a run whose start was never journaled
                continue
            if kind != "metrics":
                self.flush()
            self.sent += self._apply(uid, event)
        self.flush()

    def _apply(self, uid: str, event: dict[str, Any]) -> bool:
        """Send what the store lacks of one event; return whether there was anything."""
        from mlflow.entities import Metric, RunTag

        created = self.created
        run_id = self.run_id(uid)
        kind, stored, millis = event["event"], self.stored[run_id], int(event["time"] * 1000)
        if kind == "start":
            return self.created > created
        if kind == "params":
            new = {}
            for name, value in event["params"].items():
                value = str(value)[:6000]
                if name not in stored.params:
                    new[name] = value
                elif stored.params[name] != value:
                    log.warning(
                        "sync: run %s has param %s=%r, the journal %r; kept the store's",
                        run_id, name, stored.params[name], value,
                    )
            for batch in param_batches(new):
                self._write("log_batch", run_id, params=batch)
            stored.params.update(new)
            return bool(new)
        if kind == "metrics":
            step = event.get("step") or 0
            added = False
            for name, value in event["metrics"].items():
                seen = self._history(run_id, name)
                if (step, _value(value)) in seen:
                    continue  # logged live, or by an earlier sync
                if self.pending_run != run_id or len(self.pending) >= MAX_METRICS_PER_BATCH:
                    self.flush()
                    self.pending_run = run_id
                self.pending.append(Metric(name, float(value), millis, step))
                seen.add((step, _value(value)))
                stored.metrics.add(name)
                added = True
            return added
        if kind == "tags":
            new = {k: str(v) for k, v in event["tags"].items() if stored.tags.get(k) != str(v)}
            if new:
                self._write("log_batch", run_id, tags=[RunTag(k, v) for k, v in new.items()])
                stored.tags.update(new)
            return bool(new)
        if kind == "artifact":
            return self._artifact(run_id, stored, event)
        if kind == "dataset":
            key = dataset_key(event["dataset"])
            if key in stored.datasets:
                return False
            self._write("log_inputs", run_id, datasets=[dataset_input(event["dataset"])])
            stored.datasets.add(key)
            return True
        if kind == "model":
            if not Path(event["model"]["path"]).is_dir():
                log.warning("sync: model folder %s no longer exists; %s not registered", event["model"]["path"], event["model"]["name"])
                return False
            _, sent = register_model(self.client, self.experiment_id, run_id, event["model"])
            self.writes += sent
            return sent
        if kind == "model_tags":
            model = event["model"]
            added = tag_model(self.client, model["name"], model["uid"], event["tags"])
            if added is None:
                log.warning("sync: model %s (%s) is not registered; its tags %s are not sent",
                            model["name"], model["uid"], ", ".join(event["tags"]))
            self.writes += bool(added)
            return bool(added)
        # kind == "end"
        if self.last_end.get(uid) != self.line or (stored.ended and stored.status == event["status"]):
            return False
        self._write("set_terminated", run_id, status=event["status"], end_time=millis)
        stored.status, stored.ended = event["status"], True
        return True

    def _artifact(self, run_id: str, stored: _Stored, event: dict[str, Any]) -> bool:
        path, base = Path(event["path"]), event.get("artifact_path") or ""
        if path.is_dir():
            files = [(f, f.parent.relative_to(path).as_posix()) for f in sorted(path.rglob("*")) if f.is_file()]
        elif path.is_file():
            files = [(path, "")]
        else:
            log.warning("sync: artifact %s no longer exists; skipped", path)
            return False
        if stored.files is None:
            stored.files = {} if stored.new else self._files(run_id)
        sent = False
        for file, sub in files:
            folder = posixpath.normpath(posixpath.join(base, sub)) if base or sub != "." else ""
            folder = "" if folder == "." else folder
            dest = posixpath.join(folder, file.name) if folder else file.name
            size = file.stat().st_size
            if stored.files.get(dest) == size:
                continue  # uploaded live, or by an earlier sync
            self._write("log_artifact", run_id, str(file), folder or None)
            stored.files[dest] = size
            sent = True
        return sent
