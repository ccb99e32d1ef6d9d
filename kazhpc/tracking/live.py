"""Live tracking: the Tracker of a pipeline run directory and the JobRun of each job.

Runs are addressed by id through ``MlflowClient`` (no global "active run"), so a job in another
process or on another node attaches to its pipeline's parent run by the id in
``tracking/runs.json``. Only global rank 0 logs. Every event is journaled first
(:mod:`kazhpc.tracking.journal`), then sent; a store that cannot be reached makes the tracker go
offline once, and the job goes on.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

from kazhpc import __version__
from kazhpc.config import TrackingConfig
from kazhpc.tracking.job_run import JobRun
from kazhpc.tracking.journal import JOURNAL, start_uid

log = logging.getLogger("kazhpc.tracking")  # one logger for the package, as when it was one module

PARENT_KEY = "pipeline"
#: Makes the MLflow 3 UI open our experiments in its model-training view (runs, charts), not GenAI traces.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
#: The tag that names a run's journal ``start`` event: how ``sync`` and later jobs find the run in a store.
JOURNAL_ID_TAG = "kazhpc.journal_id"


def global_rank() -> int:
    """This process's rank in a distributed job (0 when not distributed)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return int(os.environ.get("RANK", "0"))


def default_tracking_uri(runs_root: Path) -> str:
    return f"sqlite:///{runs_root.absolute() / 'mlflow.db'}"


def git_commit() -> str:
    """The source checkout's commit (+'-dirty'); $KAZHPC_GIT_COMMIT inside containers."""
    if os.environ.get("KAZHPC_GIT_COMMIT"):
        return os.environ["KAZHPC_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def runs_view(base_url: str, tracking_uri: str, experiment: str) -> str:
    """The experiment's training-runs table in MLflow's UI (a fresh browser otherwise lands on MLflow
    3's GenAI overview); the UI's front page while the experiment does not exist yet. For a local
    store (sqlite, a folder): MLflow's client retries a server that is down for minutes."""
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception as exc:  # a store not made yet or not reachable: the link is a convenience only
        log.debug("no link to experiment %s: %s", experiment, failure_reason(exc))
        return base_url
    return f"{base_url.rstrip('/')}/#/experiments/{found.experiment_id}/runs" if found else base_url


def source_command() -> str:
    """The command that started this process, as MLflow's runs table shows it in its Source column:
    ``kazhpc run configs/...`` here, ``jobs/train.py --run-dir ...`` in a SLURM step."""
    program = Path(sys.argv[0])
    if program.parent.name == "jobs":
        name = f"jobs/{program.name}"
    elif program.parts[-2:] == ("kazhpc", "cli.py"):  # python -m kazhpc.cli, as the sweep's compare job runs it
        name = "kazhpc"
    else:
        name = program.name
    return shlex.join([name, *sys.argv[1:]])[:500]


def run_tags(config_hash: str) -> dict[str, str]:
    """Provenance tags set on every run; the ``mlflow.source.*`` ones are those MLflow's UI shows."""
    commit = git_commit()
    tags = {
        "mlflow.source.type": "JOB",
        "mlflow.source.name": source_command(),
        **({"mlflow.source.git.commit": commit.removesuffix("-dirty")} if commit != "unknown" else {}),
        "kazhpc.git_commit": commit,
        "kazhpc.config_hash": config_hash,
        "kazhpc.version": __version__,
        "kazhpc.host": socket.gethostname(),
    }
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME"):
        if os.environ.get(var):
            tags[f"slurm.{var[6:].lower()}"] = os.environ[var]
    return tags


def param_batches(params: dict[str, Any]) -> Iterator[list[Any]]:
    """Params as MLflow entities, values cut to MLflow's 6000 characters, 100 per log_batch call."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        yield items[start : start + 100]


def failure_reason(exc: BaseException) -> str:
    """A store failure in a few words ('[Errno 111] Connection refused', 'timed out'), rather
    than MLflow's nested 'API request to ... failed with exception HTTPConnectionPool(...)'."""
    if isinstance(exc, OSError) and exc.strerror:  # a local file or folder of the store
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]>]+", text)
    if errno:
        return errno.group(0).rstrip(" :")
    if "timed out" in text.lower():
        return "timed out"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def journal_id_filter(uid: str) -> str:
    """An MLflow search filter for the run with this journal id."""
    return f"tags.`{JOURNAL_ID_TAG}` = '{uid.replace(chr(39), '')}'"


class Tracker:
    """The MLflow side of one pipeline run directory."""

    def __init__(self, cfg: TrackingConfig, runs_root: Path, run_dir: Path):
        self.cfg = cfg
        self.uri = cfg.uri or default_tracking_uri(runs_root)
        self.runs_root = runs_root
        self.run_dir = run_dir
        self.active = cfg.enabled and global_rank() == 0
        self.online = self.active
        self._client: Any = None
        self._ids_file = run_dir / "tracking" / "runs.json"
        self.journal = run_dir / JOURNAL
        if self.active:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self._connect()

    # -- connection ----------------------------------------------------------------------------
    def _connect(self) -> None:
        if self.uri.startswith(("http://", "https://")):
            # Fail fast instead of MLflow's default minutes of retries (7, backoff factor 2):
            # a server that dies mid-run costs one failed request, then the job logs offline.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(math.ceil(max(1, self.cfg.timeout_s))))
            try:
                with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=self.cfg.timeout_s):
                    pass
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self._go_offline(exc)
                return
        elif self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        try:
            self._client = MlflowClient(tracking_uri=self.uri)
        except Exception as exc:  # noqa: BLE001 - an unusable store must not stop the job
            self._go_offline(exc)

    def _go_offline(self, exc: BaseException) -> None:
        if self.online:
            log.warning(
                "tracking store %s unreachable (%s): the job continues; its metrics are kept in %s; "
                "run `kazhpc sync %s` to upload them later",
                self.uri,
                failure_reason(exc),
                self.journal,
                self.run_dir,
            )
        self.online = False
        self._client = None

    def _send(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        return self._call(lambda client: getattr(client, fn_name)(*args, **kwargs))

    def _call(self, fn: Any) -> Any:
        """``fn(client)``, or None when the store is (or just went) offline."""
        if not self.online or self._client is None:
            return None
        try:
            return fn(self._client)
        except Exception as exc:  # noqa: BLE001 - any store failure must not stop the job
            self._go_offline(exc)
            return None

    def _record(self, event: dict[str, Any]) -> None:
        line = json.dumps({"time": time.time(), **event}, ensure_ascii=False, default=str) + "\n"
        # One O_APPEND write per line: the jobs of a run share this journal, and their lines
        # must not interleave (a buffered file may split a long line into several writes).
        data = memoryview(line.encode("utf-8"))
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)

    # -- run ids -------------------------------------------------------------------------------
    def run_ids(self) -> dict[str, str]:
        if self._ids_file.is_file():
            data = json.loads(self._ids_file.read_text())
            if data.get("uri") == self.uri:
                return data["runs"]
        return {}

    def _save_id(self, key: str, run_id: str) -> None:
        ids = self.run_ids()
        ids[key] = run_id
        tmp = self._ids_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"uri": self.uri, "runs": ids}, indent=2))
        os.replace(tmp, self._ids_file)

    def _journal_parent_uid(self) -> str | None:
        """The journal id of the pipeline run that an earlier job of this run directory started."""
        uid = None
        if self.journal.is_file():
            with self.journal.open(encoding="utf-8", errors="replace", newline="\n") as lines:
                for number, line in enumerate(lines, 1):
                    if PARENT_KEY not in line or '"start"' not in line:
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:  # `kazhpc sync` reports a broken line; a job need not stop for it
                        continue
                    if isinstance(event, dict) and event.get("event") == "start" and event.get("key") == PARENT_KEY:
                        uid = start_uid(event, number, self.run_dir)
        return uid

    def _experiment_id(self) -> str | None:
        if not self.online or self._client is None:
            return None
        location = None
        if not self.uri.startswith(("http://", "https://", "databricks")):
            location = (self.runs_root / "mlartifacts").absolute().as_uri()
        try:
            found = self._client.get_experiment_by_name(self.cfg.experiment)
            if found is not None:
                return found.experiment_id
            try:
                return self._client.create_experiment(
                    self.cfg.experiment, artifact_location=location, tags=EXPERIMENT_TAGS
                )
            except Exception:  # noqa: BLE001 - a concurrent job may have created it first
                found = self._client.get_experiment_by_name(self.cfg.experiment)
                if found is None:
                    raise
                return found.experiment_id
        except Exception as exc:  # noqa: BLE001 - any store failure must not stop the job
            self._go_offline(exc)
            return None

    def _find_run(self, uid: str) -> str | None:
        """The id of the run with this journal id in the store, if an earlier job created it there."""
        experiment_id = self._experiment_id()
        if experiment_id is None:
            return None
        found = self._send("search_runs", [experiment_id], filter_string=journal_id_filter(uid), max_results=1)
        return found[0].info.run_id if found else None

    # -- public API ----------------------------------------------------------------------------
    def start_pipeline(
        self, name: str, params: dict[str, Any], tags: dict[str, str], config_file: Path | None = None
    ) -> str | None:
        """Create the parent run once per run directory; later calls (other jobs) reuse it.

        "Once" is kept by the journal, not by the store: a job that finds the store up after an
        earlier job logged offline gives the store that same parent (same journal id, so that
        ``sync`` completes it later), not a second one.
        """
        if not self.active:
            return None
        existing = self.run_ids().get(PARENT_KEY)
        if existing:
            return existing
        uid = self._journal_parent_uid()
        if uid is not None:
            run_id = self._find_run(uid) or self._create_run(name, tags, parent_id=None, uid=uid)
            if run_id:
                self._save_id(PARENT_KEY, run_id)
                self._log_params(run_id, params)  # journaled with the start already
            return run_id
        uid = uuid.uuid4().hex
        self._record({"event": "start", "key": PARENT_KEY, "run": uid, "parent": None, "name": name, "tags": tags})
        self._record({"event": "params", "key": PARENT_KEY, "run": uid, "params": params})
        run_id = self._create_run(name, tags, parent_id=None, uid=uid)
        if run_id:
            self._save_id(PARENT_KEY, run_id)
            self._log_params(run_id, params)
        if config_file is not None:
            JobRun(self, PARENT_KEY, run_id, uid).log_artifact(config_file)
        return run_id

    def job(self, job: str, params: dict[str, Any], tags: dict[str, str]) -> JobRun:
        """A child run for one job (a no-op on ranks other than 0)."""
        if not self.active:
            return JobRun(self, key="", run_id=None)
        key = f"job:{job}"
        uid = uuid.uuid4().hex
        self._record({"event": "start", "key": key, "run": uid, "parent": PARENT_KEY, "name": job, "tags": tags})
        self._record({"event": "params", "key": key, "run": uid, "params": params})
        parent_id = self.run_ids().get(PARENT_KEY)
        run_id = self._create_run(job, tags, parent_id=parent_id, uid=uid) if parent_id else None
        if run_id:
            self._save_id(key, run_id)
            self._log_params(run_id, params)
        return JobRun(self, key=key, run_id=run_id, uid=uid)

    def attach(self, job: str, wait_s: float = 120.0) -> JobRun:
        """The child run that global rank 0 started for ``job``, for another node's first process to
        log that node's system metrics into: journaled under the job's key once rank 0 journaled its
        start, and sent live when the store answers."""
        if not self.cfg.enabled:
            return JobRun(self, key="", run_id=None)
        key = f"job:{job}"
        deadline = time.monotonic() + wait_s
        while not self._journal_has_start(key) and time.monotonic() < deadline:
            time.sleep(1.0)
        if not self._journal_has_start(key):
            log.warning("system metrics of this node: rank 0 has not started the %s run in %.0f s; not logged", job, wait_s)
            return JobRun(self, key="", run_id=None)
        self.online = True
        self._connect()
        return JobRun(self, key=key, run_id=self.run_ids().get(key))

    def _journal_has_start(self, key: str) -> bool:
        if not self.journal.is_file():
            return False
        marker = f'"key": {json.dumps(key)}'
        with self.journal.open(encoding="utf-8", errors="replace") as lines:
            return any('"event": "start"' in line and marker in line for line in lines)

    def finish_pipeline(self, status: str) -> None:
        if not self.active:
            return
        self._record({"event": "end", "key": PARENT_KEY, "status": status})
        run_id = self.run_ids().get(PARENT_KEY)
        if run_id:
            self._send("set_terminated", run_id, status=status)

    def _create_run(self, name: str, tags: dict[str, str], parent_id: str | None, uid: str) -> str | None:
        experiment_id = self._experiment_id()
        if experiment_id is None:
            return None
        all_tags = {**tags, JOURNAL_ID_TAG: uid}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self._send("create_run", experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id if run is not None else None

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        for batch in param_batches(params):
            self._send("log_batch", run_id, params=batch)
