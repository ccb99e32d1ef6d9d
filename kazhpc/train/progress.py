"""The training loop on the console: one rich bar with the loss, tokens/s and the time left on a
terminal; on a pipe (a SLURM log, CI) a plain log line at every tenth of the steps. It replaces the
Trainer's own ProgressCallback / PrinterCallback, which print every log dict as a raw line."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("kazhpc.train")


class TokenRate:
    """Tokens per second between two of the Trainer's logs (its ``num_tokens`` is cumulative)."""

    def __init__(self) -> None:
        self.tokens, self.time = 0.0, time.time()

    def update(self, num_tokens: float) -> float:
        now = time.time()
        rate = (num_tokens - self.tokens) / max(now - self.time, 1e-9)
        self.tokens, self.time = num_tokens, now
        return rate


def console_progress(what: str) -> Any:
    from transformers import TrainerCallback

    class ConsoleProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None
            self.task: Any = None
            self.loss: float | None = None
            self.tokens_per_s: float | None = None
            self.started = time.time()
            self.rate = TokenRate()

        def _fields(self) -> str:
            loss = f"loss {self.loss:.3f}" if self.loss is not None else "loss -"
            return loss + (f", {self.tokens_per_s:,.0f} tokens/s" if self.tokens_per_s else "")

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            self.started = time.time()
            if sys.stderr.isatty():
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                from kazhpc.console import err

                self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, transient=True)
                self.bar.start()
                self.task = self.bar.add_task(what, total=state.max_steps, completed=state.global_step, info="")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            if isinstance(logs.get("loss"), (int, float)):
                self.loss = float(logs["loss"])
            if isinstance(logs.get("num_tokens"), (int, float)):
                self.tokens_per_s = self.rate.update(float(logs["num_tokens"]))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step, info=self._fields())
                return
            tenth = max(1, state.max_steps // 10)
            if state.global_step % tenth == 0 or state.global_step == state.max_steps:
                log.info("%s: step %d/%d, %s (%.0f s)", what, state.global_step, state.max_steps, self._fields(),
                         time.time() - self.started)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return ConsoleProgress()


def use_console_progress(trainer: Any, what: str) -> Any:
    """Swap the Trainer's printing callbacks for :func:`console_progress`; return the trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(console_progress(what))
    return trainer
