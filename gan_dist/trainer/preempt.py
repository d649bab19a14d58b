"""Preemption: a SIGTERM (spot reclaim, pod deletion) asks the run to stop.

The signal only sets a flag. The loop reduces the flag across ranks at every
step boundary, so when any rank was told to stop, every rank saves at the same
step and leaves cleanly; the next start resumes there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_requested = threading.Event()


def request(reason: str = "SIGTERM") -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def reset() -> None:
    _requested.clear()


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[None]:
    """While inside, a SIGTERM to this process calls `request` (runs without Ray, in the main
    thread). The flag starts clear, and the previous handler is back afterwards, so one
    process can run one in-process run after another (tests, benchmarks).

    Under Ray the train function runs in a worker thread; the Ray integration
    hooks the worker's own SIGTERM handling instead.
    """
    reset()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: request())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
