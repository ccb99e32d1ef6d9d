"""Signal names as users write them in configs (``train.preemption_signal: USR2``)."""

from __future__ import annotations

import signal

from kazhpc.errors import KazhpcError


def signal_number(name: str) -> signal.Signals:
    """'USR2', 'SIGUSR2' or '12' → signal.SIGUSR2, with a clear error for anything else."""
    text = name.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text))
        except ValueError:
            raise KazhpcError(f"train.preemption_signal: no signal number {text}") from None
    member = getattr(signal, text if text.startswith("SIG") else f"SIG{text}", None)
    if not isinstance(member, signal.Signals) or member in (signal.SIGKILL, signal.SIGSTOP):
        raise KazhpcError(f"train.preemption_signal: {name!r} is not a catchable signal (e.g. USR2, TERM)")
    return member
