"""The owner's rules as pure code: given the processes, GPU readings, the time of day and what an
operator asked, decide whether this PC's node takes work (idle), stops at once (paused) or finishes
its segment and stops (draining). No psutil, no clock: tests drive it with plain tables.

Why each rule maps where it does:
- a game (a listed program) or another program on the GPU pauses: the owner wants the card now,
  so the segment checkpoints at its next step and the GPU is released within seconds;
- the end of the active hours drains: nobody is waiting, so the segment in flight may finish;
- the farm using more VRAM than the owner's cap pauses: the cap is a promise to the owner.
Resuming after a rule clears waits `settle_s`, so a game restarting between matches does not make
the node flap between states.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.errors import InvalidInput
from farm.contracts.hardware import GpuSample, ProcessSample

DEFAULT_SETTLE_S = 60.0


def parse_hours(text: str) -> tuple[int, int] | None:
    """'22:00-08:00' -> (1320, 480) minutes after midnight; '' -> None (always active)."""
    if not text.strip():
        return None
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    h1, m1, h2, m2 = (int(g) for g in m.groups()) if m else (99, 0, 0, 0)
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or start == end:
        raise InvalidInput("active_hours", f"must look like 22:00-08:00 (two different times), got {text!r}")
    return start, end


def within_hours(hours: tuple[int, int] | None, minute_of_day: int) -> bool:
    """True inside [start, end), which may wrap past midnight."""
    if hours is None:
        return True
    start, end = hours
    return start <= minute_of_day < end if start < end else minute_of_day >= start or minute_of_day < end


def _program(name: str) -> str:
    """Compare program names as Windows and Linux show them: case-insensitive, '.exe' optional."""
    name = name.strip().lower()
    return name[:-4] if name.endswith(".exe") else name


def validate(policy: OwnerPolicy) -> OwnerPolicy:
    parse_hours(policy.active_hours)
    if policy.vram_cap_gib is not None and not 0 < policy.vram_cap_gib <= 4096:
        raise InvalidInput("vram_cap_gib", f"must be from 0 to 4096 GiB, got {policy.vram_cap_gib}")
    return policy


def reasons(policy: OwnerPolicy, processes: Sequence[ProcessSample], gpus: Sequence[GpuSample],
            minute_of_day: int, own_pids: Collection[int], farm_vram_gib: float = 0.0) -> tuple[list[str], list[str]]:
    """(reasons to pause, reasons to drain) right now, each a short sentence for the owner."""
    pause: list[str] = []
    games = {_program(p) for p in policy.pause_programs}
    running = sorted({p.name for p in processes if _program(p.name) in games})
    if running:
        pause.append(f"{', '.join(running)} running")
    if policy.pause_on_other_gpu_process:
        others = sorted({p.name for p in processes if p.uses_gpu and p.pid not in own_pids})
        if others:
            pause.append(f"{', '.join(others)} using the GPU")
    if policy.vram_cap_gib is not None and farm_vram_gib > policy.vram_cap_gib:
        pause.append(f"farm using {farm_vram_gib:.1f} GiB, over the owner's cap of {policy.vram_cap_gib:g} GiB")
    drain = [] if within_hours(parse_hours(policy.active_hours), minute_of_day) else [
        f"outside active hours {policy.active_hours}"]
    return pause, drain


@dataclass(frozen=True)
class Decision:
    status: NodeStatus  # IDLE (takes work), PAUSED or DRAINING
    reason: str = ""


@dataclass(frozen=True)
class RulesState:
    """What the rules remember between readings."""

    policy: OwnerPolicy = OwnerPolicy()
    operator: NodeStatus | None = None  # PAUSED or DRAINING when an operator asked; None otherwise
    operator_reason: str = ""
    held: Decision = Decision(NodeStatus.IDLE)  # the decision in force
    clear_since: float | None = None  # when the rules last stopped asking for a pause or drain


def decide(state: RulesState, now: float, pause: list[str], drain: list[str],
           settle_s: float = DEFAULT_SETTLE_S) -> RulesState:
    """The next state: operator requests win; a rule's pause or drain holds until it has been clear
    for `settle_s` seconds."""
    if state.operator is not None:
        reason = state.operator_reason or f"{state.operator} by an operator"
        return replace(state, held=Decision(state.operator, reason), clear_since=None)
    if pause:
        return replace(state, held=Decision(NodeStatus.PAUSED, "; ".join(pause)), clear_since=None)
    if drain:  # a paused node takes no work either, so it may go straight to draining
        return replace(state, held=Decision(NodeStatus.DRAINING, "; ".join(drain)), clear_since=None)
    if state.held.status == NodeStatus.IDLE:
        return state
    since = now if state.clear_since is None else state.clear_since
    if now - since >= settle_s:
        return replace(state, held=Decision(NodeStatus.IDLE), clear_since=None)
    return replace(state, clear_since=since)


def operator(state: RulesState, status: NodeStatus | None, reason: str = "") -> RulesState:
    """An operator's pause or drain (status), or resume (None), which also skips the settle delay."""
    state = replace(state, operator=status, operator_reason=reason)
    return state if status is not None else replace(state, held=Decision(NodeStatus.IDLE), clear_since=None)
