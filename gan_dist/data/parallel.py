"""Worker processes for packing and loading.

forkserver, not fork: workers start from a clean single-threaded server,
not from a copy of a trainer holding Ray, gRPC, Arrow and torch threads
(a fork of a multi-threaded process can inherit a held lock and hang).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator

# Imported once by the fork server, so each worker starts warm.
PRELOAD = ["gan_dist.data.stream", "gan_dist.data.pack"]


def mp_context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _apply(fn: Callable, items: list) -> list:
    return [fn(item) for item in items]


def ordered_map(fn: Callable, items: Iterable, workers: int, chunk: int = 64) -> Iterator:
    """fn over items in `workers` processes, results in input order.

    At most 2 x workers chunks are in flight, so memory stays flat however
    long `items` is (Pool.imap would read all of it ahead)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    with ProcessPoolExecutor(workers, mp_context=mp_context()) as pool:
        pending: deque = deque()
        while batch := list(itertools.islice(it, chunk)):
            pending.append(pool.submit(_apply, fn, batch))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
