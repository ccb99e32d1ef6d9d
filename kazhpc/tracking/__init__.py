"""MLflow tracking: one parent run per pipeline run, one child run per job.

* The default store is sqlite under ``runs_root`` (``runs/mlflow.db``), shared by every pipeline
  run there, so ``kazhpc ui`` shows them all; a server URI in the config replaces it.
* Every event is also appended to ``<run_dir>/tracking/journal.jsonl``. If the store cannot be
  reached (at start or mid-run) the job goes on, says so once, and ``kazhpc sync RUN_DIR``
  replays the journal into a store later: nothing measured is lost.
* Each run has a stable id, written in its journal ``start`` event and set as its
  ``kazhpc.journal_id`` tag wherever it is created (live or by ``sync``), so ``sync`` never
  makes a second copy of a run the store already has, and sends only what the store lacks.

Modules, each importing only those above it: ``journal`` (the journal format, read back and
checked), ``lineage`` (datasets and registered models: journal records and the MLflow entities
they become), ``job_run`` (JobRun: one job's logging), ``live`` (Tracker: rank, tags, the
pipeline's runs and store while jobs run), ``system``
(system metrics through a JobRun), ``replay`` (the journal's events into one store, skipping what
it holds), ``syncing`` (``sync``: synced.json, the lock). Everything is re-exported here: import from ``kazhpc.tracking``.
"""

from kazhpc.tracking.job_run import JobRun
from kazhpc.tracking.journal import EVENT_FIELDS, JOURNAL, Journal, parse_journal, read_journal, start_uid
from kazhpc.tracking.live import (
    EXPERIMENT_TAGS,
    JOURNAL_ID_TAG,
    PARENT_KEY,
    Tracker,
    default_tracking_uri,
    failure_reason,
    git_commit,
    global_rank,
    journal_id_filter,
    param_batches,
    run_tags,
    runs_view,
)
from kazhpc.tracking.replay import MAX_METRICS_PER_BATCH, Replay
from kazhpc.tracking.system import SystemMetrics, node_id
from kazhpc.tracking.syncing import SYNCED, SyncResult, normalize_uri, sync

__all__ = [
    "EVENT_FIELDS",
    "EXPERIMENT_TAGS",
    "JOURNAL",
    "JOURNAL_ID_TAG",
    "MAX_METRICS_PER_BATCH",
    "PARENT_KEY",
    "SYNCED",
    "JobRun",
    "Journal",
    "Replay",
    "SyncResult",
    "SystemMetrics",
    "Tracker",
    "default_tracking_uri",
    "failure_reason",
    "git_commit",
    "global_rank",
    "journal_id_filter",
    "node_id",
    "normalize_uri",
    "param_batches",
    "parse_journal",
    "read_journal",
    "run_tags",
    "runs_view",
    "start_uid",
    "sync",
]
