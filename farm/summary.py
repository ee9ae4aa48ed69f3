"""What a finished run prints: a per-node table for people, one JSON object for scripts."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from farm.coordinator import JobResult
from farm.model import NodeInfo


def result_json(result: JobResult) -> dict[str, object]:
    return {
        "job_id": result.job_id,
        "outputs": [str(p) for p in result.outputs],
        "seconds": round(result.seconds, 3),
        "nodes": {
            name: {"samples": t.samples, "shards": t.shards, "segments": t.segments,
                   "sample_steps": t.steps, "seconds": round(t.seconds, 3)}
            for name, t in result.tallies.items()
        },
        "shards": [
            {"id": s.id, "home": s.home, "batch": s.batch, "segments": [list(b) for b in s.bounds]}
            for s in result.shards
        ],
    }


def print_summary(result: JobResult, nodes: Sequence[NodeInfo], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"job {result.job_id}: {len(result.outputs)} images in {result.seconds:.1f} s")
    for col in ("node", "VRAM", "samples", "shards", "segments", "steps", "busy s"):
        table.add_column(col, justify="left" if col == "node" else "right")
    for n in nodes:
        t = result.tallies[n.name]
        table.add_row(n.name, f"{n.vram_gib:g} GiB", str(t.samples), str(t.shards), str(t.segments),
                      str(t.steps), f"{t.seconds:.1f}")
    console.print(table)
    console.print("steps = sample-steps rendered (a batch of 4 for 5 steps is 20)")
    if any(n.simulated for n in nodes):
        console.print("simulated nodes: planned for their declared VRAM and speed, computed on this CPU")
    if result.outputs:
        console.print(f"outputs: {result.outputs[0].parent}/")
