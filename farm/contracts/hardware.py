"""What a PC has and is doing, as plain data (pure core): filled by the agent's probes, carried by
the agent's telemetry, and turned into nodes (one per GPU) at join."""

from __future__ import annotations

from dataclasses import dataclass, field

from farm.contracts.control import NodeStatus, OwnerPolicy


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment. `simulated`: the figures are declared, not measured."""

    index: int
    name: str
    vram_total_gib: float
    vram_used_gib: float = 0.0
    utilization: float = 0.0  # 0..1
    temperature_c: float | None = None
    power_w: float | None = None
    simulated: bool = False

    @property
    def vram_free_gib(self) -> float:
        return max(0.0, self.vram_total_gib - self.vram_used_gib)


@dataclass(frozen=True)
class ProcessSample:
    """A running program; `uses_gpu` when the driver lists it as holding GPU memory, and how much
    (0 where the driver does not say, e.g. Windows' WDDM)."""

    pid: int
    name: str
    uses_gpu: bool = False
    gpu_gib: float = 0.0


@dataclass(frozen=True)
class Hardware:
    hostname: str
    os: str
    cpu_count: int
    ram_total_gib: float
    gpus: tuple[GpuSample, ...]

    @property
    def simulated(self) -> bool:
        return any(g.simulated for g in self.gpus)


@dataclass(frozen=True)
class Telemetry:
    """One reading of a PC: its GPUs, CPU and RAM, and the processes the owner's rules look at."""

    time: float
    gpus: tuple[GpuSample, ...]
    cpu_percent: float = 0.0
    ram_used_gib: float = 0.0
    ram_total_gib: float = 0.0
    processes: tuple[ProcessSample, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Reading:
    """What the head knows of one PC from its agent."""

    status: NodeStatus
    reason: str
    gpus: tuple[GpuSample, ...]
    policy: OwnerPolicy
    by_operator: bool = False  # an operator's command echoed back: the head applied it already
    worker_starts: int = 0  # grows each time the PC's Ray worker is started again
