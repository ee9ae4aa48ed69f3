"""Hardware probes: psutil sees this process; simulated GPUs say so; NVML is used where present."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from farm.contracts.errors import FarmError
from node.probe import HostProbe, NvmlGpus, SimulatedGpus, detect_gpus, process_tree


def test_host_probe_with_simulated_gpus_says_simulated_and_lists_processes() -> None:
    probe = HostProbe(SimulatedGpus([8.0, 24.0]))
    hw = probe.hardware()
    assert hw.simulated and [g.vram_total_gib for g in hw.gpus] == [8.0, 24.0]
    assert all("simulated" in g.name for g in hw.gpus) and hw.cpu_count >= 1 and hw.ram_total_gib > 0
    reading = probe.telemetry()
    assert any(p.pid == os.getpid() for p in reading.processes)
    assert 0 < reading.ram_used_gib <= reading.ram_total_gib
    assert process_tree(os.getpid()) >= {os.getpid()} and process_tree(None) == set()


def test_nvml_where_present_otherwise_a_clear_error() -> None:
    try:
        gpus = NvmlGpus()
    except RuntimeError:
        with pytest.raises(FarmError, match="--simulate-gpu"):
            detect_gpus()
        return
    samples = gpus.gpus()  # on a PC with an NVIDIA driver: real figures
    assert samples and not any(g.simulated for g in samples)
    assert all(0 < g.vram_total_gib and 0 <= g.vram_used_gib <= g.vram_total_gib for g in samples)
    assert isinstance(detect_gpus(), NvmlGpus)


class FakeNvml:
    """The few pynvml calls the probe makes, for a PC with one card that hides its power draw."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None: ...

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"gpu{i}"

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"NVIDIA GeForce RTX 3080"  # older bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, h: str):  # type: ignore[no-untyped-def]
        return SimpleNamespace(total=10 * 1024**3, used=3 * 1024**3)

    def nvmlDeviceGetUtilizationRates(self, h: str):  # type: ignore[no-untyped-def]
        return SimpleNamespace(gpu=87)

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return 71

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        raise self.NVMLError("not supported")

    def nvmlDeviceGetComputeRunningProcesses(self, h: str):  # type: ignore[no-untyped-def]
        return [SimpleNamespace(pid=4242, usedGpuMemory=2 * 1024**3)]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: str):  # type: ignore[no-untyped-def]
        return [SimpleNamespace(pid=7, usedGpuMemory=None)]  # WDDM: the driver does not say


def test_nvml_readings_become_gpu_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    gpus = NvmlGpus()
    (gpu,) = gpus.gpus()
    assert (gpu.name, gpu.vram_total_gib, gpu.vram_used_gib, gpu.vram_free_gib) == ("NVIDIA GeForce RTX 3080", 10, 3, 7)
    assert (gpu.utilization, gpu.temperature_c, gpu.power_w, gpu.simulated) == (0.87, 71.0, None, False)
    assert gpus.gpu_memory() == {4242: 2.0, 7: 0.0}
    probe = HostProbe(gpus)
    assert not probe.hardware().simulated
