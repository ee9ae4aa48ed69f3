"""Driver for test_node_loss.py, run in its own process (Ray allows one cluster per driver).

A local Ray cluster where each simulated node is its own raylet (a separate Ray node, as a PC is).
The same job renders twice with fresh workers: undisturbed, then with one node's raylet killed in
the middle of a segment. Writes report.json: both runs' outputs and event logs. Loopback only.

The kill must land while the victim is inside a segment, however loaded the machine is. Watching
the coordinator's progress bar is not enough: step reports travel through a Ray queue and can
arrive after the segment's result, so a kill timed on them can land once the segment has already
finished (nothing is redone) or before it began. In the chaos run the first worker to take a step
past the start of a segment that resumes from a checkpoint therefore holds there, says so in a file
and waits; the driver kills that node's raylet once the file names the segment the coordinator has
the node running. The victim is whichever node gets there first, not a fixed one: the scheduler may
move a shard off a node it measured slow on a loaded machine, and a fixed victim might then never
run a resumed segment.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Every raylet and this driver on loopback: Ray otherwise swaps 127.0.0.1 for the machine's address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from waiting import ready  # noqa: E402

from farm.contracts.domain import NodeInfo, SegmentTask  # noqa: E402
from farm.jobs.jobspec import make_job  # noqa: E402
from farm.runtime import executor as executor_module  # noqa: E402
from farm.runtime.coordinator import Coordinator  # noqa: E402
from farm.runtime.executor import NODE_RESOURCE, NODE_SLOTS, RayExecutor, SegmentWorker  # noqa: E402
from farm.runtime.outputs import PngWriter  # noqa: E402
from node.simulated import simulated_nodes  # noqa: E402

# How long the held victim waits for its raylet to die before going on (the run then ends with no
# kill recorded, and the test says so, instead of hanging).
HOLD_S = 300.0


class HeldVictim(SegmentWorker):
    """The chaos run's worker (defined here, so Ray ships it by value). It runs each step callback
    as usual (the step is reported); then, in a segment that resumes from a checkpoint, once a step
    past the segment's start is done, the first node to get there claims `held` (created
    exclusively: one victim), writes what it runs and stops there until its raylet is killed with
    it: the segment must then resume elsewhere from that checkpoint."""

    held = ""

    def __init__(self, node: NodeInfo, home: str | None, events: object) -> None:
        super().__init__(node, home, events)  # type: ignore[arg-type]
        run, held = self.runner.run, Path(self.held)

        def run_then_hold(task: SegmentTask, on_step=None, should_stop=None):  # type: ignore[no-untyped-def]
            def step_then_hold(step: int) -> None:
                if on_step is not None:
                    on_step(step)
                if task.checkpoint is None or step <= task.start:
                    return
                try:
                    os.close(os.open(held.with_suffix(".claim"), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return  # another node is the victim
                part = held.with_suffix(".part")
                part.write_text(json.dumps({"node": node.name, "shard": task.shard_id, "index": task.index,
                                            "start": task.start, "end": task.end, "step": step,
                                            "samples": [s.index for s in task.samples]}))
                part.replace(held)  # whole or absent for the driver that polls it
                deadline = time.monotonic() + HOLD_S
                while time.monotonic() < deadline:
                    time.sleep(0.1)

            return run(task, step_then_hold, should_stop)

        self.runner.run = run_then_hold  # type: ignore[method-assign]


class RecordingExecutor(RayExecutor):
    """Records every segment handed to a node: which samples and steps, so that the test measures
    the work done twice in samples and steps. (Counting segment ids would depend on timing: a shard
    whose first segment is lost is unstarted again, and a replan may give its samples a new id.)"""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.handed: list[dict[str, object]] = []
        super().__init__(*args, **kwargs)

    def submit(self, node: str, task: SegmentTask):  # type: ignore[no-untyped-def]
        handle = super().submit(node, task)
        self.handed.append({"node": node, "segment": f"{task.shard_id}#{task.index}", "start": task.start,
                            "end": task.end, "samples": [s.index for s in task.samples]})
        return handle


def main(root: Path) -> None:
    nodes = simulated_nodes()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1"})
    raylets = {n.name: cluster.add_node(num_cpus=1, resources={NODE_RESOURCE + n.name: NODE_SLOTS},
                                        node_ip_address="127.0.0.1") for n in nodes}
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
    progress = root / "progress"  # changes at every activity event: the test's sign that this run is alive
    progress.write_text("cluster up")
    job = make_job(prompts=["a red circle", "a blue square", "a green triangle"], seeds=2, steps=12)
    report: dict[str, object] = {}
    held = root / "held.json"
    HeldVictim.held = str(held)
    for run in ("calm", "chaos"):
        executor_module.SegmentWorker = HeldVictim if run == "chaos" else SegmentWorker  # type: ignore[misc]
        executor = RecordingExecutor(nodes, root / "home")
        coordinator = Coordinator(executor, PngWriter(root / run), max_segment_steps=3)
        ready(coordinator)  # both runs plan on every node: their placements compare
        killed: dict[str, object] = {}
        seen = [0]  # the last activity event on_tick has seen

        def on_tick(c: Coordinator, job_id: str, run: str = run, killed: dict[str, object] = killed,
                    seen: list[int] = seen) -> None:
            new = c.events(seen[0])
            if new:
                seen[0] = new[-1].seq
                progress.write_text(f"{run}: event {seen[0]} {new[-1].kind}")
            if run != "chaos" or killed or not held.exists():
                return
            at = json.loads(held.read_text())
            view = next(v for v in c.list_nodes() if v.info.name == at["node"])
            # The coordinator has recorded this very segment as started on the victim (it always has
            # by the time the worker runs it; checked so that the report can only name that one).
            if not view.segment.startswith(f"{at['shard']}#{at['index']} "):
                return
            killed.update(segment=view.segment, held=at)
            cluster.remove_node(raylets[at["node"]], allow_graceful=False)  # the PC's raylet dies mid-segment

        view = coordinator.render(job, on_tick=on_tick)
        report[run] = {
            "status": str(view.status),
            "outputs": list(view.outputs),
            "killed": killed.get("segment", ""),
            "held": killed.get("held", {}),
            "handed": executor.handed,
            "events": [[e.kind, e.node, e.message] for e in coordinator.events(0)],
            "nodes": {v.info.name: str(v.status) for v in coordinator.list_nodes()},
            "shards": {s.id: [len(s.samples), [list(b) for b in s.bounds]] for s in view.shards},
        }
        if run == "calm":
            executor.shutdown()
    executor_module.SegmentWorker = SegmentWorker  # type: ignore[misc]
    (root / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
