"""Identifiers: sortable by creation time, short enough to type in a CLI."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_job_id(now: float) -> str:
    """A job id such as `j20261125-121300-3fa9` for a job submitted at `now` (seconds since the epoch):
    time-ordered, unique with 16 random bits per second."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    return f"j{stamp}-{secrets.token_hex(2)}"


def shard_id(job_id: str, index: int) -> str:
    return f"{job_id}/s{index}"


def job_of_shard(shard: str) -> str:
    """The job id inside a shard id (`shard_id`'s inverse)."""
    return shard.rsplit("/s", 1)[0]
