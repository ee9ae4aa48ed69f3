"""Errors that cross layer boundaries.

Every error a user can cause is a `FarmError`; entry points print its one-line message and exit with
`exit_code`, so no traceback ever reaches a user.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base of the errors that entry points turn into one line and an exit code."""

    exit_code = 1


class InvalidInput(FarmError):
    """Bad user input: names the field and the allowed range (exit code 2, like argparse)."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CheckpointError(FarmError):
    """A checkpoint payload that cannot be trusted (truncated, garbage, oversized, wrong version)."""


class DoesNotFit(FarmError):
    """A job that no node can hold in VRAM; the message names the smallest VRAM it would need."""

    exit_code = 2


class SegmentFailed(FarmError):
    """A segment raised on its node; the coordinator retries it elsewhere from its last checkpoint."""


class NodeLost(FarmError):
    """A node stopped answering (its worker process or PC died); its segments resume elsewhere."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} lost: {reason}")
        self.node = node


class JobFailed(FarmError):
    """A job gave up after too many failed segments; the message says why."""


class NotFound(InvalidInput):
    """An unknown job id or node name (the control API answers NOT_FOUND)."""


class Unauthenticated(FarmError):
    """The head or an agent refused the token: it is missing, wrong, rotated, or the node was removed."""


class PermissionDenied(FarmError):
    """A known credential asked for something outside its role (another user's job, an admin command):
    the control API answers PERMISSION_DENIED, the CLI prints one line and exits 2."""

    exit_code = 2


class Unreachable(FarmError):
    """The head or an agent did not answer (not started, wrong address, a firewall in between)."""


class LimitReached(FarmError):
    """A per-user cap is reached (unfinished jobs, open streams): the control API answers
    RESOURCE_EXHAUSTED; the message names the limit and the allowed range."""
