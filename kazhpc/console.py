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


def _through_root(record: logging.LogRecord) -> bool:
    logging.getLogger().handle(record)
    return False


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
        # MLflow gives its loggers a stderr handler of their own on import ("2026/12/03 ... INFO
        # mlflow.transformers: ..."), past the filter above: its records go through the root's
        # handlers instead (job.log; the console only for its warnings and errors).
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
        # DeepSpeed's logger prints to stdout through a handler of its own and does not propagate
        # ("Setting accelerator to CPU" on every import): its records go through the root's
        # handlers instead. A filter on the logger object survives DeepSpeed's set-up at import.
        logging.getLogger("DeepSpeed").addFilter(_through_root)
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


def progress(items: Iterable[T], total: int | None, what: str, every: int = 10_000) -> Iterator[T]:
    """Yield ``items`` while showing how far along ``what`` is: ``total`` items, or, where that is
    not known ahead (rows streamed from a source), a count (in a log: a line every ``every``)."""
    if sys.stderr.isatty():
        from rich.progress import track

        yield from track(items, total=total, description=what, transient=True, console=err)
        return
    started = time.time()
    step = max(1, total // 4) if total else every
    done = 0
    for done, item in enumerate(items, 1):
        yield item
        if done % step == 0 or done == total:
            log.info("%s: %d%s (%.0f s)", what, done, f"/{total}" if total else "", time.time() - started)
    if not total and done > step and done % step:  # a short loop says nothing
        log.info("%s: %d (%.0f s)", what, done, time.time() - started)


class LibraryBar:
    """A stand-in for ``tqdm`` in a library's modules (lm-eval's request loops: see
    kazhpc.evaluation.models.route_lm_eval_bars), so that its long loops look like kazhpc's own:
    one rich bar on a terminal, a few log lines elsewhere. Only loops whose description starts
    with one of ``shown`` are drawn ("Running loglikelihood requests"); the rest (building
    contexts, checking a cache) pass silently. The subset of tqdm's interface those modules use."""

    shown: tuple[str, ...] = ("Running",)
    #: What the lines are about (the model under test: kazhpc.evaluation.sharding sets it).
    prefix = "evaluate"

    def __init__(self, iterable: Iterable[T] | None = None, desc: str | None = None, total: int | None = None,
                 disable: bool = False, **_: object) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n, self.started = 0, time.time()
        self.what = f"{self.prefix}: {(desc or '').removeprefix('Running ')}"
        self.on = bool(not disable and self.total and (desc or "").startswith(self.shown))
        self.bar = None
        if self.on and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True, console=err)
            self.task = self.bar.add_task(self.what, total=self.total)
            self.bar.start()

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if not self.on:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=self.n)
            return
        step = max(1, self.total // 4)  # type: ignore[operator]
        if before // step != self.n // step or self.n == self.total:
            log.info("%s: %d/%d (%.0f s)", self.what, self.n, self.total, time.time() - self.started)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def set_description(self, *_: object, **__: object) -> None:
        pass

    set_postfix = set_description

    def __enter__(self) -> LibraryBar:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
