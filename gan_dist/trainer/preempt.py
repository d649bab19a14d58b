"""Preemption: a SIGTERM (spot reclaim, pod deletion) asks the run to stop.

The signal only sets a flag. The loop reduces the flag across ranks at every
step boundary, so when any rank was told to stop, every rank saves at the same
step and leaves cleanly; the next start resumes there.

A run blocked waiting for data (a shard read that stalls, a remote index that
does not answer) never reaches the next step boundary, and the read's own
timeout (GAN_DIST_IO_TIMEOUT, with retries) can take minutes. So in the main
thread of a run without Ray, the waits for data are marked `interruptible`: a
stop request that such a wait has not answered within WAIT_GRACE_SECONDS raises
`Interrupted` out of it. Nothing is saved then (the step in progress may be
half done: with n_critic > 1 a batch is read after a D update), so the run stops
with its last checkpoint standing, and a resume starts there.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator

# How long a wait for data may go on after a stop request before it is abandoned: a healthy
# read finishes well within it (and the run then saves at the step boundary as usual).
WAIT_GRACE_SECONDS = 5.0

_requested = threading.Event()
_handling = False  # our handlers are installed (a run without Ray, in the main thread)
_depth = 0  # interruptible waits the main thread is inside
_armed = False  # the grace timer runs


class Interrupted(BaseException):
    """A stop request abandoned a wait for data. A BaseException, like KeyboardInterrupt, so
    that no `except Exception` on the way (a reader counting a bad sample) swallows it."""


class StopNow(KeyboardInterrupt):
    """A second SIGTERM to a driver that had passed the first one on: stop without waiting for
    the save, as Ctrl-C does."""


def request(reason: str = "SIGTERM") -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def reset() -> None:
    _requested.clear()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A wait for data that a stop request may abandon (raising Interrupted) once
    WAIT_GRACE_SECONDS have passed without it ending. Only where `sigterm_requests_stop` is
    in force; elsewhere (under Ray, in other threads) the wait runs as it is."""
    global _depth
    if not _handling or threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    if requested():
        _arm()
    try:
        yield
    finally:
        _depth -= 1
        if not _depth:
            _disarm()


def _arm() -> None:
    global _armed
    if not _armed:
        _armed = True
        signal.setitimer(signal.ITIMER_REAL, WAIT_GRACE_SECONDS)


def _disarm() -> None:
    global _armed
    if _armed:
        _armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def _on_sigterm(signum, frame) -> None:
    request()
    if _depth:
        _arm()


def _on_alarm(signum, frame) -> None:
    if _depth:  # the timer may fire just as the wait ends: then there is nothing to abandon
        raise Interrupted(f"a stop request was not answered within {WAIT_GRACE_SECONDS:g} s of waiting for data")


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[None]:
    """While inside, a SIGTERM to this process calls `request` (runs without Ray, in the main
    thread), and abandons an `interruptible` wait that goes on for WAIT_GRACE_SECONDS more.
    The flag starts clear, and the previous handlers are back afterwards, so one process can
    run one in-process run after another (tests, benchmarks).

    Under Ray the train function runs in a worker thread; the Ray integration
    hooks the worker's own SIGTERM handling instead.
    """
    global _handling
    reset()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_alarm = signal.signal(signal.SIGALRM, _on_alarm)
    _handling = True
    try:
        yield
    finally:
        _handling = False
        _disarm()
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigterm_passed_on(ask_workers: Callable[[], None]) -> Iterator[None]:
    """While inside, a SIGTERM to this process (the driver of a Ray run: `kill`, a deleted pod,
    `ray job stop`) calls `ask_workers` once, on a thread of its own (it may call Ray, which a
    signal handler must not), and lets the run go on to its save; a second SIGTERM raises
    StopNow. Only in the main thread; the previous handler is back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    passed_on = threading.Event()

    def on_sigterm(signum, frame) -> None:
        if passed_on.is_set():
            raise StopNow("a second SIGTERM: stopped without waiting for the save")
        passed_on.set()
        print("gan-dist: SIGTERM: every rank saves at its next step and stops "
              "(another SIGTERM stops at once, unsaved)", file=sys.stderr, flush=True)
        threading.Thread(target=ask_workers, name="gan-dist-sigterm", daemon=True).start()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
