"""Driver for test_node_loss.py, run in its own process (Ray allows one cluster per driver).

A local Ray cluster where each simulated node is its own raylet (a separate Ray node, as a PC is).
The same job renders twice with fresh workers: undisturbed, then with one node's raylet killed in
the middle of a segment. Writes report.json: both runs' outputs and event logs. Loopback only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Every raylet and this driver on loopback: Ray otherwise swaps 127.0.0.1 for the machine's address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from farm.contracts.control import NodeStatus
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator  # noqa: E402
from farm.runtime.executor import NODE_RESOURCE, NODE_SLOTS, RayExecutor
from farm.runtime.outputs import PngWriter
from node.simulated import simulated_nodes


def main(root: Path, victim: str) -> None:
    nodes = simulated_nodes()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1"})
    raylets = {n.name: cluster.add_node(num_cpus=1, resources={NODE_RESOURCE + n.name: NODE_SLOTS},
                                        node_ip_address="127.0.0.1") for n in nodes}
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
    job = make_job(prompts=["a red circle", "a blue square", "a green triangle"], seeds=2, steps=12)
    report: dict[str, object] = {}
    for run in ("calm", "chaos"):
        executor = RayExecutor(nodes, root / "home")
        coordinator = Coordinator(executor, PngWriter(root / run), max_segment_steps=3)
        killed: dict[str, str] = {}

        def on_tick(c: Coordinator, job_id: str) -> None:
            if run != "chaos" or killed:
                return
            node = next(v for v in c.list_nodes() if v.info.name == victim)
            if node.status == NodeStatus.BUSY and node.segment_step > int(node.segment.split()[-1].split("-")[0]):
                killed["segment"] = node.segment
                cluster.remove_node(raylets[victim], allow_graceful=False)  # the PC's raylet dies mid-segment

        view = coordinator.render(job, on_tick=on_tick)
        report[run] = {
            "status": str(view.status),
            "outputs": list(view.outputs),
            "killed": killed.get("segment", ""),
            "events": [[e.kind, e.node, e.message] for e in coordinator.events(0)],
            "nodes": {v.info.name: str(v.status) for v in coordinator.list_nodes()},
            "shards": {s.id: [len(s.samples), [list(b) for b in s.bounds]] for s in view.shards},
        }
        if run == "calm":
            executor.shutdown()
    (root / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
