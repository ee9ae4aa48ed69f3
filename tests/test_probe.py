"""Hardware probes: psutil sees this process; simulated GPUs say so; NVML is used where present."""

from __future__ import annotations

import os

import pytest

from farm.errors import FarmError
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
