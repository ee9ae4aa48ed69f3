"""How many long-lived streams (followed events, output downloads) each user may hold open at once.

Every open stream keeps one of the server's worker threads; without a cap, one user's 40 followers
took all of them and every other call waited. A user gets `per_user` streams and all users together
`total` (fewer than the server's threads, so plain calls always find one); one more is refused with
one line (RESOURCE_EXHAUSTED on the wire) instead of waiting.
"""

from __future__ import annotations

import threading
from collections import Counter

from farm.contracts.errors import LimitReached

PER_USER = 8
TOTAL = 24  # of the control server's 32 worker threads


class StreamSlots:
    def __init__(self, per_user: int = PER_USER, total: int = TOTAL) -> None:
        self.per_user = per_user
        self.total = total
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, user: str) -> None:
        """One slot for `user`, or LimitReached naming the limit that is full."""
        with self._lock:
            if self._open[user] >= self.per_user:
                raise LimitReached(f"streams: {user} has {self._open[user]} open (allowed: 1 to {self.per_user} "
                                   "per user); close a `farm` follower or dashboard first")
            if sum(self._open.values()) >= self.total:
                raise LimitReached(f"streams: the head has {self.total} open (allowed: 1 to {self.total} in all); "
                                   "try again when one closes")
            self._open[user] += 1

    def give_back(self, user: str) -> None:
        with self._lock:
            self._open[user] -= 1
            if self._open[user] <= 0:
                del self._open[user]
