"""Stop a run cleanly on SIGINT/SIGTERM: finish the current step, save a checkpoint, exit.

Why: schedulers pre-empt jobs with SIGTERM (and a grace period before SIGKILL), and Ctrl-C is how
a user stops a run. Both should cost at most the step in flight, never the work since the last
periodic checkpoint. The handler only records the signal; the training loop checks it at each step
boundary, where the state is consistent. A second signal of the same kind stops at once (the
default behaviour is restored after the first), for a loop that is stuck.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["StopRequest", "exit_code", "stop_on_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Whether (and by which signal) the run was asked to stop; `signum` None: keep going."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set the yielded `StopRequest` instead of ending the process.

    Outside the main thread (where Python cannot install handlers) it yields a request that never
    fires. The previous handlers are restored on exit.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        request.signum = signum
        signal.signal(signum, previous[signum])  # a second one of the same kind acts as usual

    for signum in _SIGNALS:
        previous[signum] = signal.signal(signum, handle) or signal.SIG_DFL  # None: set outside Python
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
