"""Event-time timers, one heap per detector (local incidents, surges).

An entry is (due_ms, seq, kind, *what): `kind` is one of its owner's timer kinds and `what`
says what it is about; `seq` orders timers due at the same time in the order they were set,
so they fire the same way in every run. Checkpoints hold the entries and `seq` as they are.
"""

from __future__ import annotations

import heapq
from typing import Any

Timer = tuple[Any, ...]  # (due_ms, seq, kind, *what)


class Timers:
    """A heap of timers in (due time, order set) order."""

    __slots__ = ("heap", "seq")

    def __init__(self) -> None:
        # Changed in place only, so a loop may hold it in a local and read `heap[0][0]`, the
        # next due time, itself.
        self.heap: list[Timer] = []
        self.seq = 0

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, due_ms: int, kind: int, *what: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (due_ms, self.seq, kind, *what))

    def pop_due(self, now_ms: int) -> Timer | None:
        """The next timer due by `now_ms`, taken off the heap; None when none is."""
        heap = self.heap
        if heap and heap[0][0] <= now_ms:
            return heapq.heappop(heap)
        return None

    def take(self, kind: int) -> list[Timer]:
        """Take every timer of one kind off the heap, due or not; in due order."""
        heap = self.heap
        taken = sorted(timer for timer in heap if timer[2] == kind)
        heap[:] = [timer for timer in heap if timer[2] != kind]
        heapq.heapify(heap)
        return taken

    def snapshot(self) -> list[Timer]:
        return list(self.heap)

    def restore(self, timers: list[Timer], seq: int) -> None:
        self.heap[:] = timers
        heapq.heapify(self.heap)
        self.seq = seq
