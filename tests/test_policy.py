"""The owner's rules, driven by a fake process list and clock: pause, drain and resume transitions."""

from __future__ import annotations

import pytest

from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.errors import InvalidInput
from farm.contracts.hardware import GpuSample, ProcessSample
from node.policy import RulesState, decide, operator, parse_hours, reasons, validate, within_hours

GPU = (GpuSample(0, "RTX 3080", 10.0, vram_used_gib=3.0),)
WORKER_PID = 100
POLICY = OwnerPolicy(vram_cap_gib=8.0, active_hours="22:00-08:00", pause_programs=("eldenring.exe", "steam"))
NIGHT = 23 * 60
DAY = 12 * 60


def procs(*items: tuple[int, str, bool]) -> list[ProcessSample]:
    return [ProcessSample(pid, name, gpu) for pid, name, gpu in items]


class Owner:
    """Feeds readings to the rules as an agent's loop would, with a fake clock."""

    def __init__(self, policy: OwnerPolicy = POLICY) -> None:
        self.state = RulesState(policy)
        self.now = 0.0

    def read(self, processes: list[ProcessSample], minute: int = NIGHT, after: float = 5.0, farm_vram: float = 0.0):
        self.now += after
        pause, drain = reasons(self.state.policy, processes, GPU, minute, {WORKER_PID}, farm_vram)
        self.state = decide(self.state, self.now, pause, drain, settle_s=60)
        return self.state.held


def test_a_game_pauses_at_once_and_resume_waits_for_it_to_stay_closed() -> None:
    owner = Owner()
    assert owner.read(procs((WORKER_PID, "ray::SegmentWorker", True))).status == NodeStatus.IDLE
    paused = owner.read(procs((WORKER_PID, "ray::SegmentWorker", True), (7, "EldenRing.exe", True)))
    assert paused.status == NodeStatus.PAUSED and "EldenRing.exe running" in paused.reason
    assert owner.read([], after=30).status == NodeStatus.PAUSED  # closed 30 s ago: still settling
    assert owner.read(procs((8, "eldenring", False)), after=1).status == NodeStatus.PAUSED  # back between matches
    assert owner.read([], after=59).status == NodeStatus.PAUSED
    assert owner.read([], after=2).status == NodeStatus.PAUSED  # clear for 2 s only: restarted the wait
    assert owner.read([], after=60).status == NodeStatus.IDLE


def test_another_program_on_the_gpu_pauses_unless_the_owner_allows_it() -> None:
    blender = procs((WORKER_PID, "raylet", True), (9, "blender", True))
    assert "blender using the GPU" in Owner().read(blender).reason
    assert Owner().read(procs((9, "blender", False))).status == NodeStatus.IDLE  # running, but not on the GPU
    relaxed = OwnerPolicy(pause_on_other_gpu_process=False)
    assert Owner(relaxed).read(blender).status == NodeStatus.IDLE


def test_active_hours_drain_in_the_day_and_resume_at_night() -> None:
    owner = Owner()
    assert owner.read([], minute=NIGHT).status == NodeStatus.IDLE
    day = owner.read([], minute=DAY)
    assert day == owner.state.held and day.status == NodeStatus.DRAINING and "22:00-08:00" in day.reason
    assert owner.read([], minute=7 * 60 + 58).status == NodeStatus.DRAINING  # inside again (wraps midnight): settling
    assert owner.read([], minute=7 * 60 + 59, after=60).status == NodeStatus.IDLE


def test_game_during_the_day_pauses_then_drains_once_closed() -> None:
    owner = Owner()
    assert owner.read(procs((3, "steam", False)), minute=DAY).status == NodeStatus.PAUSED
    assert owner.read([], minute=DAY).status == NodeStatus.DRAINING


def test_farm_over_the_vram_cap_pauses() -> None:
    held = Owner().read([], farm_vram=9.5)
    assert held.status == NodeStatus.PAUSED and "cap of 8 GiB" in held.reason
    assert Owner().read([], farm_vram=7.9).status == NodeStatus.IDLE


def test_operator_pause_and_drain_win_and_resume_is_immediate() -> None:
    owner = Owner()
    owner.state = operator(owner.state, NodeStatus.DRAINING, "maintenance")
    assert owner.read([]) == owner.state.held and owner.state.held.reason == "maintenance"
    owner.state = operator(owner.state, NodeStatus.PAUSED)
    assert owner.read([]).status == NodeStatus.PAUSED
    owner.state = operator(owner.state, None)
    assert owner.read([], after=0.1).status == NodeStatus.IDLE  # no settle delay after an operator's resume
    owner.state = operator(owner.state, None)
    assert owner.read(procs((7, "eldenring.exe", True))).status == NodeStatus.PAUSED  # the owner's game still wins


@pytest.mark.parametrize("text, expected", [("", None), ("22:00-08:00", (1320, 480)), (" 9:30 - 17:00 ", (570, 1020))])
def test_parse_hours(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_hours(text) == expected


@pytest.mark.parametrize("text", ["22-08", "25:00-08:00", "10:00-10:00", "10:61-11:00", "always"])
def test_bad_active_hours_name_the_field(text: str) -> None:
    with pytest.raises(InvalidInput, match="active_hours"):
        validate(OwnerPolicy(active_hours=text))


def test_within_hours_edges() -> None:
    assert within_hours((540, 1020), 540) and not within_hours((540, 1020), 1020)
    assert within_hours((1320, 480), 0) and not within_hours((1320, 480), 480) and within_hours(None, 0)
