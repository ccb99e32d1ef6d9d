"""What a person at the terminal sees: one-line errors, log records, progress of long loops.

Input errors (a bad config, a missing file) print one line and exit with their status (2; 75 for
a preempted job, 130 for Ctrl-C) without a traceback; anything else is a bug and keeps its
traceback. Long loops show a rich bar on a terminal and a few plain log lines elsewhere (a SLURM
log, CI), so that nothing runs for minutes without a word.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.text import Text

from kazhpc.errors import KazhpcError, Preempted

T = TypeVar("T")
log = logging.getLogger("kazhpc")

# soft_wrap: a long path is never cut into lines (copy-paste must work in any terminal or log);
# markup off: a message's own brackets ('evaluate.tasks[mine].path') are text, not rich styles.
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def labelled(label: str, style: str, message: str) -> Text:
    """'error: ...' / 'warning: ...' with the label coloured and the message verbatim."""
    return Text.assemble((label, style), " ", message)


def ours_or_serious(record: logging.LogRecord) -> bool:
    """The console's filter: kazhpc's own records, and other libraries' errors. Their warnings and
    INFO lines (FutureWarnings, lm-eval's per-task lines) still reach each stage's job.log."""
    return record.name == "kazhpc" or record.name.startswith("kazhpc.") or record.levelno >= logging.ERROR


def setup_logging() -> None:
    """Log records to stderr, one plain line each; ``KAZHPC_VERBOSE=1`` (``kazhpc -v``) shows
    third-party records too."""
    level = os.environ.get("KAZHPC_LOG_LEVEL", "INFO").upper()
    # One plain line per record, never wrapped: rich's log handler folds a long path into lines
    # at the terminal's width, and a path cut in two cannot be copied. A terminal gets a short
    # prefix; SLURM logs and pipes the time and the logger too.
    fmt = "%(levelname)s %(message)s" if err.is_terminal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt)
    if os.environ.get("KAZHPC_VERBOSE") != "1":
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:  # the console's; not job.log, not a test's capture
                handler.addFilter(ours_or_serious)
        # Libraries' own progress bars (datasets' "Generating split", weights loading, hub files):
        # kazhpc shows one bar per long loop of its own instead.
        for var in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(var, "1")
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger: job.log, not the console
    for noisy in ("urllib3", "filelock", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes >= 0.50 warns on every import that an optional CPU kernel package is missing;
    # its own CPU path works without it (../shared/README.md), so the line is only noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in record.getMessage()
    )


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Turn a KazhpcError into a one-line message and its exit status (2; 75 for a preempted job)."""
    try:
        yield
    except KeyboardInterrupt:  # Ctrl-C outside a job; within one it is kazhpc.errors.Interrupted
        err.print("interrupted (Ctrl-C)", highlight=False)
        raise SystemExit(130) from None
    except KazhpcError as exc:
        err.print(labelled("error:", "bold red", str(exc)), highlight=False)
        if isinstance(exc, Preempted):
            exc.requeue()  # only now, with run.json and MLflow up to date: a requeue ends the job at once
        raise SystemExit(exc.exit_code) from None


def progress(items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """Yield ``items`` while showing how far along ``what`` is (``total`` items)."""
    if sys.stderr.isatty():
        from rich.progress import track

        yield from track(items, total=total, description=what, transient=True)
        return
    started = time.time()
    step = max(1, total // 4)
    for done, item in enumerate(items, 1):
        yield item
        if done % step == 0 or done == total:
            log.info("%s: %d/%d (%.0f s)", what, done, total, time.time() - started)
