"""The executors' shared watchdog: expires calls at their deadline, under the executor's lock."""

from __future__ import annotations

import queue
import threading

from taskrun.executors.watchdog import Watchdog


def test_due_items_expire_in_deadline_order_and_settled_ones_are_skipped() -> None:
    """Items past their deadline go to on_expired (earliest first); refused ones do not."""
    lock = threading.Lock()
    got: queue.Queue[list[str]] = queue.Queue()
    settled = {"b"}
    dog = Watchdog[str](
        lock,
        "test-watchdog",
        expire_locked=lambda item: item not in settled,
        on_expired=got.put,
    )
    with lock:  # all three are due before the thread can look: one batch
        dog.add_locked(0.0, "a")
        dog.add_locked(0.0, "b")
        dog.add_locked(0.0, "c")
    assert got.get(timeout=30) == ["a", "c"]
    with lock:
        dog.close_locked()


def test_no_thread_until_the_first_deadline_and_close_ends_it() -> None:
    """A run without timeouts has no watchdog thread; closing stops the one it has."""
    lock = threading.Lock()
    dog = Watchdog[str](lock, "test-watchdog-2", expire_locked=lambda i: True, on_expired=print)
    assert not any(t.name == "test-watchdog-2" for t in threading.enumerate())
    with lock:
        dog.add_locked(3600.0, "far away")
    thread = next(t for t in threading.enumerate() if t.name == "test-watchdog-2")
    with lock:
        dog.close_locked()
    thread.join(timeout=30)
    assert not thread.is_alive()
