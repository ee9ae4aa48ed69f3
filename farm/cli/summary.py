"""What a finished run prints: a per-node table for people, one JSON object for scripts."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from farm.contracts.control import JobView
from farm.contracts.domain import NodeInfo
from farm.contracts.text import safe_markup


def result_json(view: JobView) -> dict[str, object]:
    return {
        "job_id": view.id,
        "status": str(view.status),
        "outputs": list(view.outputs),
        "seconds": round((view.finished_at or 0) - (view.started_at or view.submitted_at), 3),
        "nodes": {
            s.node: {"samples": s.samples, "shards": s.shards, "segments": s.segments, "sample_steps": s.steps,
                     "seconds": round(s.seconds, 3)}
            for s in view.shares
        },
        "shards": [
            {"id": s.id, "home": s.home, "batch": len(s.samples), "segments": [list(b) for b in s.bounds],
             "memory_mode": s.memory_mode}
            for s in view.shards
        ],
    }


def print_summary(view: JobView, nodes: Sequence[NodeInfo], console: Console | None = None) -> None:
    console = console or Console()
    seconds = (view.finished_at or 0) - (view.started_at or view.submitted_at)
    table = Table(title=f"job {view.id}: {len(view.outputs)} outputs in {seconds:.1f} s ({view.status})")
    for col in ("node", "VRAM", "samples", "shards", "segments", "steps", "busy s"):
        table.add_column(col, justify="left" if col == "node" else "right")
    shares = {s.node: s for s in view.shares}
    for n in nodes:
        s = shares.get(n.name)
        if s is not None:
            table.add_row(safe_markup(n.name), f"{n.vram_gib:g} GiB", str(s.samples), str(s.shards), str(s.segments),
                          str(s.steps), f"{s.seconds:.1f}")
    console.print(table)
    console.print("steps = sample-steps rendered (a batch of 4 for 5 steps is 20)")
    if any(n.simulated for n in nodes):
        console.print("simulated nodes: planned for their declared VRAM and speed, computed on this CPU")
    if view.outputs:
        console.print(f"outputs: {safe_markup(view.outputs[0].rsplit('/', 1)[0])}/")
    if view.error:
        console.print(f"[red]error: {safe_markup(view.error)}")
