"""``sync``: a run directory's journal into a store, once, however often it is run.

``tracking/synced.json`` records, per store, how far the journal was uploaded and the runs' ids,
so the next sync reads on from there; a file lock keeps two syncs of one run directory apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kazhpc.errors import KazhpcError
from kazhpc.tracking.journal import JOURNAL, Journal, parse_journal
from kazhpc.tracking.live import EXPERIMENT_TAGS, JOURNAL_ID_TAG, failure_reason
from kazhpc.tracking.replay import Replay

log = logging.getLogger("kazhpc.tracking")  # one logger for the package, as when it was one module

SYNCED = Path("tracking") / "synced.json"


@dataclass
class SyncResult:
    """What one ``sync`` did."""

    uri: str
    runs: dict[str, str]  # journal key -> the store's id of its (latest) run
    created: int  # runs created; the others were in the store already (logged live, or synced before)
    sent: int  # journal events that had something the store lacked (0: it was up to date)
    lines: int  # journal lines the store has now, as recorded in tracking/synced.json


def normalize_uri(uri: str) -> str:
    """One spelling per store, for the keys of synced.json: absolute sqlite paths, no trailing '/'."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).absolute()}"
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else uri


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store that is down, slow or refusing raises through MlflowClient (as opposed to a bug)."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError, requests.RequestException, sqlalchemy.exc.SQLAlchemyError)


@contextlib.contextmanager
def _mlflow_http(retries: int, timeout_s: float, force: bool) -> Iterator[None]:
    """MLflow's HTTP retries and timeout (read from the environment on each request) for a block;
    ``force`` overrides the user's own settings, otherwise they win."""
    values = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(math.ceil(max(1, timeout_s))),
    }
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if force or name not in os.environ:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _open_store(uri: str, experiment: str, run_dir: Path, journal: Path) -> tuple[Any, str, bool]:
    """(client, experiment id, whether the experiment is new), or one KazhpcError if the store does not answer."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    location = None
    try:
        if uri.startswith("sqlite:///"):  # as Tracker does: next to the db, not under the cwd's ./mlruns
            db = Path(uri[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            location = (db.parent / "mlartifacts").absolute().as_uri()
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                return client, client.create_experiment(experiment, location, EXPERIMENT_TAGS), True
            except MlflowException:  # created meanwhile by a job of another run
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
    except _store_errors() as exc:
        raise KazhpcError(
            f"tracking store {uri} did not answer ({failure_reason(exc)}): nothing was uploaded; "
            f"the journal {journal} is kept: run `kazhpc sync {run_dir}` again when the store is up"
        ) from None
    if found.lifecycle_stage == "deleted":
        raise KazhpcError(
            f"{uri}: experiment {experiment!r} is deleted; restore it (mlflow experiments restore) to sync into it"
        )
    return client, found.experiment_id, False


def _read_synced(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    log.warning(
        "%s is unreadable: syncing as if nothing had been uploaded (runs already in a store are still "
        "found by their %s tag, and not copied)", path, JOURNAL_ID_TAG,
    )
    return {}


def _write_synced(path: Path, records: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def sync(run_dir: Path, uri: str, experiment: str, timeout_s: float = 5.0) -> SyncResult:
    """Upload to the store at ``uri`` what it lacks of the run directory's journal; safe to repeat.

    Runs the store already has (logged live, or by an earlier sync) are found by their
    ``kazhpc.journal_id`` tag and completed, not copied; metric points, params, tags, files and
    end states the store holds are not sent again. ``tracking/synced.json`` records per store
    the journal lines uploaded and the runs' ids, so the next sync reads on from there. A store
    that does not answer within ``timeout_s`` is one KazhpcError, before anything is sent.
    """
    journal_path = run_dir / JOURNAL
    if not journal_path.is_file():
        if not run_dir.is_dir():
            raise KazhpcError(f"{run_dir}: no such run directory")
        raise KazhpcError(f"{run_dir}: no tracking journal ({JOURNAL}): tracking was off, or no job has run there")
    journal = parse_journal(journal_path)
    if not journal.events:
        raise KazhpcError(f"{journal_path}: no tracking events yet: nothing to sync")
    if journal.partial:
        log.warning(
            "%s:%d: the last line is incomplete (a job may be writing it): left for the next sync",
            journal_path, journal.lines + 1,
        )
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / SYNCED) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise KazhpcError(f"{run_dir}: another `kazhpc sync` of this run directory is running; let it finish") from None
    try:
        return _sync_locked(run_dir, journal, normalize_uri(uri), experiment, timeout_s)
    finally:
        lock.release()


def _sync_locked(run_dir: Path, journal: Journal, uri: str, experiment: str, timeout_s: float) -> SyncResult:
    synced_path = run_dir / SYNCED
    records = _read_synced(synced_path)
    record = records.get(uri) if isinstance(records.get(uri), dict) else None
    if record is not None and record.get("experiment") != experiment:
        record = None
    # One short try, without MLflow's retries, says whether the store is there at all.
    with _mlflow_http(retries=0, timeout_s=timeout_s, force=True):
        client, experiment_id, fresh = _open_store(uri, experiment, run_dir, journal.path)
    replay = Replay(client, experiment_id, run_dir, fresh)
    # A few quick retries while sending (not MLflow's default ~4 minutes): a sync that stops is
    # resumed by the next one without copies.
    with _mlflow_http(retries=2, timeout_s=max(30.0, timeout_s), force=False):
        done = 0
        try:
            done = replay.resume(record, journal.lines, f"{synced_path} ({uri})")
            replay.upload(journal, done)
        except _store_errors() as exc:
            if replay.writes:
                records[uri] = {"experiment": experiment, "lines": done, "runs": replay.ids, "time": time.time()}
                _write_synced(synced_path, records)
                kept = f"what was sent is kept (recorded in {synced_path}) and will not be sent twice; run"
            else:
                kept = "nothing was uploaded; the journal is kept: run"
            where = f"{journal.path}:{replay.line}" if replay.line else str(journal.path)
            raise KazhpcError(
                f"sync to {uri} stopped at {where} ({failure_reason(exc)}): {kept} `kazhpc sync {run_dir}` again"
            ) from None
    if replay.orphans:
        log.warning("sync: %d journal events belong to no run started in %s; skipped", replay.orphans, journal.path)
    records[uri] = {"experiment": experiment, "lines": journal.lines, "runs": replay.ids, "time": time.time()}
    _write_synced(synced_path, records)
    runs = {key: replay.ids[uid] for key, uid in replay.latest.items() if uid in replay.ids}
    return SyncResult(uri, runs, created=replay.created, sent=replay.sent, lines=journal.lines)
