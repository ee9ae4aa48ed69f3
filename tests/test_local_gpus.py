"""The embedded farm on a PC's own NVIDIA GPUs (a fake NVML): one node per GPU with its NVML budget,
each actor pinned to its device; simulated nodes only without a GPU or with `--simulate`; the head's
own GPU released when its owner pauses it."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from cluster_harness import FakeProbe
from test_agent import Clock
from test_probe import FakeNvml
from waiting import wait_until

from farm.cli.main import build_parser, local_nodes, main
from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.domain import NodeInfo
from farm.contracts.hardware import ProcessSample
from farm.runtime.executor import pinned_env
from node.agent import Agent


class TwoGpuNvml(FakeNvml):
    """A PC with a 24 GiB and a 12 GiB card."""

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetMemoryInfo(self, h: str):  # type: ignore[no-untyped-def]
        return SimpleNamespace(total=(24 if h == "gpu0" else 12) * 1024**3, used=1024**3)


class NoDriverNvml(FakeNvml):
    def nvmlInit(self) -> None:
        raise self.NVMLError("NVML Shared Library Not Found")


def test_a_two_gpu_pc_gives_two_nodes_with_the_nvml_budgets_each_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", TwoGpuNvml())
    monkeypatch.setattr("socket.gethostname", lambda: "box")
    nodes = local_nodes()
    assert [(n.name, n.vram_gib, n.gpu_index, n.simulated) for n in nodes] == [
        ("box-gpu0", 24.0, 0, False), ("box-gpu1", 12.0, 1, False)]
    assert [pinned_env(n) for n in nodes] == [{"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}},
                                              {"env_vars": {"CUDA_VISIBLE_DEVICES": "1"}}]


def test_simulated_nodes_only_without_a_gpu_or_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", NoDriverNvml())
    assert [(n.vram_gib, n.simulated, n.gpu_index) for n in local_nodes()] == [
        (8.0, True, None), (12.0, True, None), (24.0, True, None)]
    monkeypatch.setitem(sys.modules, "pynvml", TwoGpuNvml())
    asked = local_nodes(build_parser().parse_args(["demo", "--simulate", "8,16"]).simulate)
    assert [(n.name, n.vram_gib, n.simulated, n.gpu_index) for n in asked] == [
        ("sim-8gb", 8.0, True, None), ("sim-16gb", 16.0, True, None)]
    assert pinned_env(asked[0]) is None


@pytest.mark.parametrize("bad", ["0", "8,,12", "eight", "5000", ",".join(["8"] * 65)])
def test_bad_simulate_is_one_line_naming_the_flag(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["demo"], ["render", "a red circle"], ["resume", "--state", "s"]):
        with pytest.raises(SystemExit) as e:
            main([*command, "--simulate", bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "--simulate" in err and "1 to 4096 GiB" in err


def test_each_actor_sees_only_its_own_gpu(embedded) -> None:  # type: ignore[no-untyped-def]
    """On the embedded cluster: the actor of a node on GPU 1 runs with CUDA_VISIBLE_DEVICES=1 (its
    torch sees that card as cuda:0); a simulated node's actor is not pinned."""
    import ray

    from farm.runtime.executor import RayExecutor

    second = RayExecutor([NodeInfo("sim-12gb", 12.0, gpu="fake GPU 1", gpu_index=1),
                          NodeInfo("sim-24gb", 24.0, simulated=True)], embedded.home)
    try:
        assert ray.get(second.actors["sim-12gb"].visible_devices.remote(), timeout=120) == "1"
        assert ray.get(second.actors["sim-24gb"].visible_devices.remote(), timeout=120) != "1"
        ray.get(second.actors["sim-12gb"].release.remote(), timeout=60)  # nothing loaded: a no-op
    finally:
        second.shutdown()


def test_the_heads_own_gpu_is_released_once_per_owner_pause() -> None:
    probe, clock, released = FakeProbe(), Clock(), []
    agent = Agent(probe, OwnerPolicy(pause_programs=("eldenring.exe",)), None, release_s=5, settle_s=30,
                  clock=clock, minute_of_day=lambda: 600, release=lambda: released.append(clock.now))
    assert agent.tick().status == NodeStatus.IDLE
    probe.processes = [ProcessSample(4242, "EldenRing.exe", True)]
    clock.now = 1
    assert agent.tick().status == NodeStatus.PAUSED and not released  # `release_s` to checkpoint first
    clock.now = 7
    agent.tick()
    clock.now = 9
    agent.tick()
    assert wait_until(lambda: len(released) == 1)
    probe.processes, clock.now = [], 10
    assert agent.tick().status == NodeStatus.PAUSED  # settling
    clock.now = 45
    assert agent.tick().status == NodeStatus.IDLE
    agent.pause("paused by operator")
    clock.now = 55
    agent.tick()
    assert wait_until(lambda: len(released) == 2)
