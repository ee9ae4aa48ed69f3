"""Stage placement benchmark: HunyuanVideo-1.5 and Wan 2.1 jobs on four home cards, with a decode that
fits no mode of a shard's card run as a segment of its own on a card it fits, against the same
scheduler with every decode kept in its shard's last denoising segment.

    .venv/bin/python bench/stages.py [--seeds N]

Both run in this process on the real core (`farm.core.decide.decide` and
`farm.core.baselines.without_stage_placement`, one flag apart) and the real coordinator on a virtual
clock (`farm.runtime.simulate`, which checks every segment against its card's budget for the stages it
runs, and that every step of every sample runs exactly once). Cards: 8/12/16/24 GiB at speeds
1/1.6/2.2/3.5 (bench/scheduler.py's `hetero4`). HunyuanVideo-1.5's tiled VAE decode peaks above what
its streamed denoiser needs (16.1 GiB at 848x480x61 against 13.1), so without stage placement each of
its videos waits for a card that holds the decode; Wan 2.1 fits every card either way.

Admission is counted by the real planner (`planner.plan_shards` of each job alone on the four cards).
It is the same both ways, by the cost model's shape: each stage's smallest peak is its peak under
streamed, tiled offload, so a job whose every stage fits some card fits the card with the most room
whole. What stage placement changes is which cards may run a job's denoising (printed per kind).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from farm.contracts.errors import DoesNotFit  # noqa: E402
from farm.core import costmodel, planner  # noqa: E402
from farm.core.baselines import without_stage_placement  # noqa: E402
from farm.core.costmodel import Shape  # noqa: E402
from farm.core.decide import decide  # noqa: E402
from farm.core.planner import Demand, PlanContext  # noqa: E402
from farm.runtime.simulate import SimJob, SimNode, simulate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduler import hetero4  # noqa: E402

STEPS = 50
# (name, costed shape, fewest and most samples per job, how often it is asked for)
KINDS = [
    ("hunyuanvideo15 848x480x61", Shape("hunyuanvideo15", 848, 480, 61), 1, 2, 2),
    ("hunyuanvideo15 640x368x61", Shape("hunyuanvideo15", 640, 368, 61), 1, 3, 2),
    ("hunyuanvideo15 480x320x61", Shape("hunyuanvideo15", 480, 320, 61), 1, 3, 2),
    ("hunyuanvideo15 848x480x121", Shape("hunyuanvideo15", 848, 480, 121), 1, 1, 1),  # fits no home card
    ("wan21 832x480x81", Shape("wan21", 832, 480, 81), 1, 4, 3),
]
POLICIES = (("stage placement", decide), ("decode with denoise", without_stage_placement))
CONTEXTS = (("stage placement", PlanContext()), ("decode with denoise", PlanContext(place_stages=False)))


def workload(rng: random.Random, jobs: int) -> list[SimJob]:
    out = []
    for i in range(jobs):
        name, shape, lo, hi, _ = rng.choices(KINDS, weights=[k[4] for k in KINDS])[0]
        out.append(SimJob(f"j{i:02d}-{name.replace(' ', '-')}", name, shape, rng.randint(lo, hi), STEPS))
    return out


def admitted(nodes: list[SimNode], jobs: list[SimJob], context: PlanContext) -> list[SimJob]:
    """The jobs the planner places at all on these cards (each alone, as at submission)."""
    out = []
    for job in jobs:
        try:
            planner.plan_shards(job.job_id, Demand(job.model, job.shape, job.steps, tuple(range(job.samples))),
                                [n.info for n in nodes], context=context)
        except DoesNotFit:
            continue
        out.append(job)
    return out


def denoising_cards(nodes: list[SimNode], shape: Shape, context: PlanContext) -> str:
    """The cards that may run a sample's denoising (its decode there or, with stage placement, elsewhere)."""
    infos = [n.info for n in nodes]
    decodable = planner.stage_batch(shape, infos, context, 1, costmodel.DECODE_ROLES) if context.place_stages else 0
    encodable = planner.stage_batch(shape, infos, context, 1, costmodel.ENCODE_ROLES) if context.place_stages else 0
    cards = [f"{n.vram_gib:g}" for n in infos if planner.node_fits(shape, n, 1, context, decodable, encodable)]
    return "/".join(cards) + " GiB" if cards else "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="workloads to run (default 5)")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per workload (default 12)")
    args = parser.parse_args()
    began = time.perf_counter()
    nodes = hetero4()
    print("== cards 8/12/16/24 GiB, speeds 1/1.6/2.2/3.5; cards that may run a sample's denoising:")
    print(f"{'kind':28} " + " ".join(f"{name:>22}" for name, _ in CONTEXTS))
    for name, shape, *_ in KINDS:
        print(f"{name:28} " + " ".join(f"{denoising_cards(nodes, shape, c):>22}" for _, c in CONTEXTS))
    print(f"\n== {args.seeds} workloads of {args.jobs} jobs, {STEPS} steps each, all queued at once")
    print(f"{'seed':>4} {'samples':>7} {'admitted (stages / without)':>28} {'makespan stages':>16} "
          f"{'without':>10} {'without / stages':>17}")
    ratios, admits = [], {name: 0 for name, _ in CONTEXTS}
    offered = 0
    for seed in range(args.seeds):
        jobs = workload(random.Random(seed), args.jobs)
        accepted = {name: admitted(nodes, jobs, context) for name, context in CONTEXTS}
        offered += len(jobs)
        for name in admits:
            admits[name] += len(accepted[name])
        outcomes = {name: simulate(nodes, accepted[name], fn, name) for name, fn in POLICIES}
        for o in outcomes.values():
            assert o.jobs_done == len(accepted[o.policy]) and o.duplicated == 0, o
        staged, whole = outcomes["stage placement"], outcomes["decode with denoise"]
        ratio = whole.makespan / staged.makespan
        ratios.append(ratio)
        counts = f"{len(accepted['stage placement'])} / {len(accepted['decode with denoise'])} of {len(jobs)}"
        samples = sum(j.samples for j in accepted["stage placement"])
        print(f"{seed:>4} {samples:>7} {counts:>28} {staged.makespan:14.0f} s {whole.makespan:8.0f} s {ratio:17.3f}")
    print(f"\njobs admitted: with stage placement {admits['stage placement']} of {offered}, "
          f"without {admits['decode with denoise']} of {offered}")
    print(f"makespan without / with stage placement: mean {statistics.mean(ratios):.3f}, "
          f"worst {min(ratios):.3f}, best {max(ratios):.3f}")
    print(f"\n({time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
