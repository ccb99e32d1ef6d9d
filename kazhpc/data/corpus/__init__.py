"""Raw-text corpora for continued pretraining, on datatrove (see kazhpc.data.corpus.flow).

datatrove logs with loguru: each task to stderr at INFO and to its log file. Importing this
package (the job, and every worker process, which imports kazhpc's steps to unpickle them) keeps
the per-task files (``logs/<stage>/logs/task_*.log``) and sends only warnings and errors on to
Python logging, so that the console shows kazhpc's lines, not datatrove's per-task chatter.
"""

from __future__ import annotations

import logging


#: datatrove warnings that say nothing is wrong: a task whose documents had no near duplicate, a
#: task that got no input file (more tasks than files) and so tokenized nothing.
_BENIGN = ("No .remove file for rank", "No data saved.")


def _forward(message: object) -> None:
    record = message.record  # type: ignore[attr-defined]
    if record["message"].startswith(_BENIGN):
        return
    level = logging.ERROR if record["level"].no >= 40 else logging.WARNING
    logging.getLogger("datatrove").log(level, "%s", record["message"])


def _task_logger(logging_dir: object, rank: int, local_rank: int = 0, node_rank: int = -1) -> object:
    from loguru import logger

    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")  # type: ignore[attr-defined]
    logger.add(logfile, colorize=False, level="DEBUG",
               format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}")
    logger.add(_forward, level="WARNING", format="{message}")
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


def _forward_only() -> None:
    """Instead of datatrove's default logger (stderr at DEBUG), which it re-adds after each task."""
    from loguru import logger

    logger.remove()
    logger.add(_forward, level="WARNING", format="{message}")


def _quiet_datatrove() -> None:
    import datatrove.executor.base as base
    import datatrove.utils.logging as datatrove_logging

    if base.add_task_logger is not _task_logger:
        base.add_task_logger = _task_logger
        datatrove_logging.setup_default_logger = _forward_only
        _forward_only()


_quiet_datatrove()
