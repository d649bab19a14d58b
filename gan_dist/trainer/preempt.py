"""Preemption: a SIGTERM (spot reclaim, pod deletion) asks the run to stop.

The signal only sets a flag. The loop reduces the flag across ranks at every
step boundary, so when any rank was told to stop, every rank saves at the same
step and leaves cleanly; the next start resumes there.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def request(reason: str = "SIGTERM") -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def reset() -> None:
    _requested.clear()


def install_sigterm_handler() -> bool:
    """Route SIGTERM to `request` when running in the main thread (runs without Ray).

    Under Ray the train function runs in a worker thread; the Ray integration
    hooks the worker's own SIGTERM handling instead.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, lambda signum, frame: request())
    return True
