"""Polling for tests of threads and processes: wait for a condition, bounded, never sleep blindly.

A fixed sleep is either too short on a loaded machine (the test fails) or too long on an idle one
(the suite is slow); these return as soon as the condition holds and give up only after a timeout
sized for a heavily loaded machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """True as soon as `predicate()` is truthy; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for(fetch: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """`fetch()`'s first truthy value; AssertionError naming `what` and the last value seen after
    `timeout` seconds (so a failure says what never happened, not just that time ran out)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last seen: {value!r})")
        time.sleep(interval)


def ready(coordinator, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    """Tick `coordinator` until every node's worker has answered its first probe (a fresh embedded
    farm's actors take seconds to start): tests about placement then see every node at once."""
    deadline = time.monotonic() + timeout
    while any(not n.ready for n in coordinator.state.nodes.values()):
        assert time.monotonic() < deadline, "the nodes' workers did not answer"
        coordinator.tick(0.1)
