"""Simulated GPUs for machines without one (the embedded demo, tests, CI).

A simulated node declares the VRAM budget and relative speed of a home card; the scheduler plans for
those figures while the work itself runs on the CPU. Its name and `simulated=True` say so wherever
it is shown, so nobody mistakes it for a real GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from farm.contracts.domain import NodeInfo

# Relative speeds of typical cards of these sizes (an 8 GB card is usually an older, slower one).
DEMO_CARDS: tuple[tuple[float, float], ...] = ((8.0, 1.0), (12.0, 1.6), (24.0, 3.5))


def simulated_nodes(cards: Sequence[tuple[float, float]] = DEMO_CARDS) -> list[NodeInfo]:
    """One simulated node per (VRAM GiB, relative speed) pair, named by its budget."""
    nodes = []
    for vram, speed in cards:
        name = f"sim-{vram:g}gb"
        n = sum(1 for x in nodes if x.name.startswith(name))
        nodes.append(
            NodeInfo(name=name if n == 0 else f"{name}-{n}", vram_gib=vram, speed=speed,
                     gpu=f"simulated {vram:g} GiB (CPU)", simulated=True)
        )
    return nodes
