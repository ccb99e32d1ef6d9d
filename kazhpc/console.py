"""Progress for long loops: a rich bar on a terminal, a few plain log lines elsewhere (a SLURM
log, CI), so that nothing runs for minutes without a word."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("kazhpc")


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
