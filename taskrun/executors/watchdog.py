"""The watchdog: one daemon thread that expires calls at their deadline (``timeout=``).

The thread and Dask executors share it; the process executor's workers enforce their
own timeouts. It works under the executor's lock (one lock, no ordering to get wrong):
the executor adds a deadline when a call *starts* (not when it is submitted: calls can
wait in a queue), and the watchdog, at each deadline, asks the executor under the lock
whether the call expires now (``expire_locked``: False when it already finished or was
cancelled -- the executor's ``settled`` flag decides), then hands the expired calls to
``on_expired`` without the lock, where the executor kills and resolves them.

No polling: the thread sleeps on a condition until the earliest deadline or until a
new, possibly earlier deadline is added; it is started with the first deadline, so runs
without timeouts have no watchdog thread at all.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Watchdog"]

T = TypeVar("T")


class Watchdog(Generic[T]):
    """Deadlines of running calls and the thread that expires them (see the module)."""

    def __init__(
        self,
        lock: threading.Lock,
        name: str,
        *,
        expire_locked: Callable[[T], bool],
        on_expired: Callable[[list[T]], None],
    ) -> None:
        self._lock = lock  # the executor's
        self._wake = threading.Condition(lock)  # a deadline was added, or closing
        self._name = name
        self._expire_locked = expire_locked
        self._on_expired = on_expired
        self._deadlines: list[tuple[float, int, T]] = []
        self._seq = itertools.count()  # ties: first added, first expired; T need not order
        self._thread: threading.Thread | None = None
        self._closed = False

    def add_locked(self, timeout: float, item: T) -> None:
        """ITEM expires TIMEOUT seconds from now (the executor's lock is held)."""
        heapq.heappush(self._deadlines, (time.monotonic() + timeout, next(self._seq), item))
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=self._name, daemon=True)
            self._thread.start()
        self._wake.notify()

    def close_locked(self) -> None:
        """The executor is closing: the thread ends (the executor's lock is held)."""
        self._closed = True
        self._wake.notify_all()

    def _watch(self) -> None:
        while True:
            expired: list[T] = []
            with self._lock:
                while not expired:
                    if self._closed:
                        return
                    now = time.monotonic()
                    while self._deadlines and self._deadlines[0][0] <= now:
                        _, _, item = heapq.heappop(self._deadlines)
                        if self._expire_locked(item):
                            expired.append(item)
                    if not expired:
                        wait = self._deadlines[0][0] - now if self._deadlines else None
                        self._wake.wait(wait)
            self._on_expired(expired)
