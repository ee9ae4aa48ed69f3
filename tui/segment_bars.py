"""Per-sample segment bars for the job detail: where each sample's denoising steps stand.

A sample's bar spans all its steps; each segment is drawn in its own shade so the cuts between
nodes show: done steps solid, the running segment yellow, waiting steps dim.
"""

from __future__ import annotations

from rich.text import Text

from farm.contracts.control import JobView, ShardView
from farm.contracts.text import safe_text

DONE = ("green", "dark_green")
RUNNING = "yellow"
WAITING = ("grey50", "grey30")


def shard_bar(shard: ShardView, steps: int, width: int) -> Text:
    """One bar `width` cells wide; cell c shows the step that c maps to."""
    text = Text()
    for cell in range(width):
        step = cell * steps // width
        index = next((i for i, (a, b) in enumerate(shard.bounds) if a <= step < b), len(shard.bounds) - 1)
        start, end = shard.bounds[index]
        if step < shard.step:
            text.append("█", DONE[index % 2])
        elif shard.node and start <= shard.step < end:
            text.append("▒", RUNNING)
        else:
            text.append("░", WAITING[index % 2])
    return text


def sample_bars(job: JobView, width: int, limit: int = 200) -> Text:
    """A line per sample, in sample order: index, bar, steps done, and the node running it now.

    At most `limit` lines: a job may have 10,000 samples, and a screen shows a few dozen.
    """
    steps = job.spec.steps
    bars = {shard.id: shard_bar(shard, steps, width) for shard in job.shards}  # shared by a shard's samples
    lines = sorted(((s, shard) for shard in job.shards for s in shard.samples), key=lambda pair: pair[0])
    if not lines:
        return Text("not split into shards yet", style="dim")
    text = Text(no_wrap=True, overflow="ellipsis")
    for n, (sample, shard) in enumerate(lines[:limit]):
        if n:
            text.append("\n")
        text.append(f"#{sample:<4} ")
        text.append_text(bars[shard.id])
        text.append(f" {min(shard.step, steps):>4}/{steps}")
        text.append(f"  {len(shard.bounds)} segments")
        if shard.node:
            text.append(safe_text(f"  {shard.node}"), style="magenta")
    if len(lines) > limit:
        text.append(f"\n… and {len(lines) - limit} more samples", style="dim")
    return text
