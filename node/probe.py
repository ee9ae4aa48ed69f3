"""What the PC has and is doing: GPUs from NVML (nvidia-ml-py) where an NVIDIA driver is present,
CPU, RAM and processes from psutil; or simulated GPUs on PCs without one (tests, the demo), which
say so in their name and `simulated` flag.

The processes and their GPU use feed the owner's rules (`node.policy`): a game is found by name, and
another program on the GPU by the driver's list of processes holding GPU memory.
"""

from __future__ import annotations

import logging
import platform
import socket
import time
from collections.abc import Sequence
from typing import Protocol

import psutil

from farm.contracts.hardware import GpuSample, Hardware, ProcessSample, Telemetry

log = logging.getLogger(__name__)
GIB = 1024**3


class GpuSource(Protocol):
    def gpus(self) -> tuple[GpuSample, ...]: ...

    def gpu_memory(self) -> dict[int, float]:
        """GiB each process holds on these GPUs (0.0 where the driver does not say)."""


class SimulatedGpus:
    """Declared cards for PCs without an NVIDIA GPU: (VRAM GiB) each; the work runs on the CPU."""

    def __init__(self, vram_gib: Sequence[float]) -> None:
        self._gpus = tuple(GpuSample(i, f"simulated {v:g} GiB (CPU)", v, simulated=True)
                           for i, v in enumerate(vram_gib))

    def gpus(self) -> tuple[GpuSample, ...]:
        return self._gpus

    def gpu_memory(self) -> dict[int, float]:
        return {}


class NvmlGpus:
    """NVIDIA GPUs through NVML; raises RuntimeError when no driver or no GPU is found."""

    def __init__(self) -> None:
        import pynvml

        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            raise RuntimeError(f"NVML unavailable: {e}") from None
        if count == 0:
            raise RuntimeError("NVML found no GPU")
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def _optional(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except self._nvml.NVMLError:  # not every card reports every figure (e.g. power on laptops)
            return None

    def gpus(self) -> tuple[GpuSample, ...]:
        nv = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = self._optional(nv.nvmlDeviceGetUtilizationRates, h)
            temp = self._optional(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            power = self._optional(nv.nvmlDeviceGetPowerUsage, h)
            name = nv.nvmlDeviceGetName(h)
            out.append(GpuSample(
                index=i, name=name.decode() if isinstance(name, bytes) else name,
                vram_total_gib=mem.total / GIB, vram_used_gib=mem.used / GIB,
                utilization=util.gpu / 100 if util is not None else 0.0,
                temperature_c=float(temp) if temp is not None else None,
                power_w=power / 1000 if power is not None else None))
        return tuple(out)

    def gpu_memory(self) -> dict[int, float]:
        nv = self._nvml
        held: dict[int, float] = {}
        for h in self._handles:
            for fn in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
                for p in self._optional(fn, h) or ():
                    held[p.pid] = held.get(p.pid, 0.0) + (p.usedGpuMemory or 0) / GIB
        return held


def detect_gpus(simulate: Sequence[float] | None = None) -> GpuSource:
    """Simulated GPUs when asked; otherwise NVML. No GPU and no --simulate-gpu is an error, so a PC
    never joins with a made-up card by accident."""
    if simulate:
        return SimulatedGpus(simulate)
    try:
        return NvmlGpus()
    except RuntimeError as e:
        from farm.contracts.errors import FarmError

        raise FarmError(f"no NVIDIA GPU found ({e}); pass --simulate-gpu GIB to join with a simulated one") from None


class HostProbe:
    """A PC's hardware and telemetry: the GPU source plus psutil for CPU, RAM and processes."""

    def __init__(self, gpus: GpuSource) -> None:
        self.gpu_source = gpus
        psutil.cpu_percent(None)  # the first call primes the counter

    def hardware(self) -> Hardware:
        return Hardware(hostname=socket.gethostname(), os=f"{platform.system()} {platform.release()}",
                        cpu_count=psutil.cpu_count() or 1, ram_total_gib=psutil.virtual_memory().total / GIB,
                        gpus=self.gpu_source.gpus())

    def telemetry(self, every_process: bool = True) -> Telemetry:
        """One reading. `every_process`: every running program (the owner's rules look for games by
        name); otherwise only those holding GPU memory, far cheaper on a PC with hundreds of them."""
        held = self.gpu_source.gpu_memory()
        if every_process:
            named = [(p.info["pid"], p.info["name"] or "") for p in psutil.process_iter(["pid", "name"])]
        else:
            named = [(pid, _name(pid)) for pid in held]
        processes = tuple(ProcessSample(pid, name, pid in held, held.get(pid, 0.0)) for pid, name in named)
        ram = psutil.virtual_memory()
        return Telemetry(time=time.time(), gpus=self.gpu_source.gpus(), cpu_percent=psutil.cpu_percent(None),
                         ram_used_gib=(ram.total - ram.available) / GIB, ram_total_gib=ram.total / GIB,
                         processes=processes)


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:  # it ended, or is not ours to read
        return ""


def process_tree(pid: int | None) -> set[int]:
    """`pid` and its descendants (the Ray worker's processes: never 'another program on the GPU')."""
    if pid is None:
        return set()
    try:
        root = psutil.Process(pid)
        return {pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.Error:
        return set()
