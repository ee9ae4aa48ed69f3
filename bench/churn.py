"""Churn: 200 jobs on a simulated cluster whose nodes leave and come back at random.

The real coordinator (the pure `apply`/`decide`, checkpoints handed off, failures handled) runs on a
virtual clock against the simulated executor of farm/runtime/simulate.py: a segment takes the time
the speed model says for its node's true speed; a node that leaves loses the segment it was running
(the coordinator sees NodeLost, as when a raylet dies) and comes back empty-handed. Prints jobs
completed, outputs written more than once, the work redone as a fraction of the work needed, and the
makespan over the lower bound of the same cluster without churn (`farm.runtime.simulate.lower_bound`:
time a node spends away is counted against the farm, so the ratio carries the cost of churn).

Run: .venv/bin/python bench/churn.py [--jobs 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from farm.contracts.domain import NodeInfo  # noqa: E402
from farm.core.costmodel import Shape  # noqa: E402
from farm.runtime.simulate import Churn, LowerBound, Outcome, SimJob, SimNode, lower_bound, simulate  # noqa: E402

CARDS = [(8.0, 1.0), (12.0, 1.6), (16.0, 2.2), (24.0, 3.5), (12.0, 1.3), (24.0, 2.8)]
# (model, costed shape, samples per prompt-seed batch): images at SD 1.5 / SDXL size, a short Wan video.
KINDS = [("sd15", Shape("sd15", 512, 512)), ("sdxl", Shape("sdxl", 1024, 1024)),
         ("wan21-fp8", Shape("wan21", 832, 480, 33, dtype="fp8"))]


def workload(jobs: int, seed: int) -> tuple[list[SimNode], list[SimJob]]:
    """The churn cluster and `jobs` random image and short video jobs."""
    rng = random.Random(seed)
    nodes = [SimNode(NodeInfo(f"pc{i}", vram, speed, simulated=True), speed) for i, (vram, speed) in enumerate(CARDS)]
    out = []
    for i in range(jobs):
        model, shape = rng.choice(KINDS)
        out.append(SimJob(f"j{i:03d}", model, shape, rng.randint(1, 4) * rng.randint(1, 3), rng.choice((20, 30, 40)),
                          owner=rng.choice(("ana", "ben", "cy"))))
    return nodes, out


def run(jobs: int = 200, seed: int = 7) -> tuple[Outcome, LowerBound, Churn]:
    """The churn run on the real coordinator, and the bound of its workload on the cluster."""
    nodes, work = workload(jobs, seed)
    churn = Churn(seed=seed)
    return simulate(nodes, work, churn=churn), lower_bound(nodes, work), churn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    began = time.perf_counter()
    out, bound, churn = run(args.jobs, args.seed)
    print(f"cluster: {len(CARDS)} nodes, each up ~{churn.up_s:.0f} s then down ~{churn.down_s:.0f} s (exponential)")
    print(f"node departures: {out.departures}, simulated time {out.makespan / 3600:.1f} h, "
          f"wall {time.perf_counter() - began:.1f} s")
    print(f"jobs completed: {out.jobs_done}/{args.jobs}")
    print(f"outputs duplicated: {out.duplicated}")
    print(f"work redone: {out.redone:.4f} of the work needed "
          f"({out.executed:.0f} sample-steps computed for {out.needed:.0f} needed)")
    print(f"makespan / lower bound without churn: {out.makespan / bound.value:.3f} "
          f"({out.makespan:.0f} s / {bound.value:.0f} s)")


if __name__ == "__main__":
    main()
