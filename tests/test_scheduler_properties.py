"""Properties of the scheduler over random clusters and workloads (hypothesis).

* never beyond a node's budget: every shard fits its home, every assignment fits its node in the
  memory mode it names, every simulated task fits the node that runs it;
* every sample is scheduled exactly once: shards partition the samples, and a whole simulated run
  renders every step of every sample once, in order;
* never a node idle while a segment that fits it waits: after a tick, no idle online node and no
  unassigned ready segment that fits it are left.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.contracts.domain import NodeInfo, NodeState, ReadySegment
from farm.contracts.errors import DoesNotFit
from farm.core import costmodel, planner
from farm.core.costmodel import Shape
from farm.core.planner import Demand, PlanContext
from farm.runtime.simulate import SimJob, SimNode, simulate

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [
    Shape("sd15", 512, 512),
    Shape("sd15", 768, 768),
    Shape("sdxl", 1024, 1024),
    Shape("ltxv", 768, 512, 121),
    Shape("wan21", 832, 480, 81, dtype="fp8"),
    Shape("wan21", 832, 480, 41),
    Shape("hunyuanvideo15", 480, 320, 61, dtype="fp8"),
]
MODELS = {s: f"{s.family}-{i}" for i, s in enumerate(SHAPES)}

vram = st.sampled_from([4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 48])
speed = st.floats(min_value=0.3, max_value=5.0)


@st.composite
def clusters(draw: st.DrawFn, max_nodes: int = 6) -> list[NodeInfo]:
    count = draw(st.integers(1, max_nodes))
    return [NodeInfo(f"n{i}", draw(vram), draw(speed)) for i in range(count)]


@st.composite
def demands(draw: st.DrawFn) -> Demand:
    shape = draw(st.sampled_from(SHAPES))
    samples = draw(st.integers(1, 40))
    return Demand(MODELS[shape], shape, draw(st.integers(2, 60)), tuple(range(samples)), draw(st.integers(0, 1)))


@st.composite
def contexts(draw: st.DrawFn, nodes: list[NodeInfo]) -> PlanContext:
    names = [n.name for n in nodes]
    return PlanContext(
        segment_seconds=draw(st.sampled_from([5.0, 30.0, 120.0])),
        backlog={n: draw(st.floats(0, 3000)) for n in names},
        loaded={n: frozenset(draw(st.sets(st.sampled_from(list(MODELS.values())), max_size=2))) for n in names},
        peak_factors={n: draw(st.floats(costmodel.MIN_CORRECTION, 1.5)) for n in names},
    )


@SETTINGS
@given(st.data())
def test_shards_partition_the_samples_and_fit_their_homes(data: st.DataObject) -> None:
    nodes = data.draw(clusters())
    context = data.draw(contexts(nodes))
    queue = [(f"j{i}", d) for i, d in enumerate(data.draw(st.lists(demands(), min_size=1, max_size=4)))]
    fits_somewhere = {
        job_id: any(costmodel.best_fit(d.shape, n.vram_gib, 1, context.peak_factors[n.name]) for n in nodes)
        for job_id, d in queue
    }
    if not all(fits_somewhere.values()):
        try:
            planner.plan_queue(queue, nodes, context=context)
        except DoesNotFit as e:
            assert "GiB of VRAM" in str(e)
            return
        raise AssertionError("a job that fits no node was planned")
    plan = planner.plan_queue(queue, nodes, context=context)
    by_name = {n.name: n for n in nodes}
    for job_id, d in queue:
        shards = plan[job_id]
        assert sorted(i for s in shards for i in s.sample_indices) == list(d.samples)
        assert len({s.id for s in shards}) == len(shards)
        for s in shards:
            home = by_name[s.home]
            assert s.need_gib * context.peak_factors[s.home] <= costmodel.usable_gib(home.vram_gib) + 1e-9
            assert dict(s.needs)[s.memory_mode] == s.need_gib
            assert len(s.bounds) >= 2 and s.bounds[0][0] == 0 and s.bounds[-1][1] == d.steps
            assert all(a[1] == b[0] for a, b in zip(s.bounds, s.bounds[1:]))
            # only an encode-only first segment and a decode-only last one run no step
            assert all(a < b for i, (a, b) in enumerate(s.bounds) if not s.encode_only(i) and not s.decode_only(i))


@st.composite
def ticks(draw: st.DrawFn) -> tuple[list[ReadySegment], list[NodeState]]:
    infos = draw(clusters(max_nodes=8))
    models = ["x", "y", "z"]
    states = [
        NodeState(info, draw(st.booleans()), draw(st.booleans()) or draw(st.booleans()),
                  frozenset(draw(st.sets(st.sampled_from(models), max_size=2))), draw(st.floats(0.9, 1.5)))
        for info in infos
    ]
    ready = []
    for i in range(draw(st.integers(0, 10))):
        needs = tuple(sorted(((m, draw(st.floats(1.0, 40.0))) for m in draw(st.sets(st.sampled_from(
            [str(m) for m in costmodel.MODES]), min_size=1))), key=lambda mn: -mn[1]))
        home = draw(st.sampled_from([i.name for i in infos] + ["gone"]))
        ready.append(ReadySegment(f"j{i % 3}/s{i}", draw(st.integers(0, 5)), home, needs[0][1], f"j{i % 3}",
                                  draw(st.sampled_from(models)), draw(st.integers(0, 1)), needs))
    return ready, states


def fits(seg: ReadySegment, node: NodeState, mode: str) -> bool:
    return dict(seg.needs)[mode] * node.peak_factor <= costmodel.usable_gib(node.info.vram_gib)


@SETTINGS
@given(ticks(), st.one_of(st.none(), st.floats(1.0, 1000.0)))
def test_a_tick_respects_budgets_and_leaves_no_fitting_pair_idle(
        case: tuple[list[ReadySegment], list[NodeState]], work: float | None) -> None:
    # with predictions (`work` seconds at speed 1, a hand-off away from home) shards also migrate
    ready, nodes = case

    def finish(seg: ReadySegment, node: NodeState) -> float:
        assert work is not None
        return work / node.info.speed + (0.0 if node.info.name == seg.home else 5.0)

    out = planner.plan_tick(ready, nodes, finish=finish if work is not None else None)
    by_name = {n.info.name: n for n in nodes}
    by_seg = {(s.shard_id, s.index): s for s in ready}
    assert len({a.node for a in out}) == len(out)
    assert len({(a.shard_id, a.index) for a in out}) == len(out)
    for a in out:
        node = by_name[a.node]
        assert node.online and not node.busy
        assert fits(by_seg[(a.shard_id, a.index)], node, a.memory_mode)
        # the cheapest mode (in time) that fits, never a slower one than needed
        seg = by_seg[(a.shard_id, a.index)]
        assert not any(fits(seg, node, m) for m, _ in seg.needs[: [m for m, _ in seg.needs].index(a.memory_mode)])
    used = {a.node for a in out}
    waiting = [s for s in ready if (s.shard_id, s.index) not in {(a.shard_id, a.index) for a in out}]
    for node in nodes:
        if node.online and not node.busy and node.info.name not in used:
            assert not any(fits(s, node, m) for s in waiting for m, _ in s.needs)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_whole_simulated_run_renders_every_step_once_within_budgets(data: st.DataObject) -> None:
    # The engine asserts budgets and step order on every task and raises if a sample is left undone.
    infos = data.draw(clusters(max_nodes=5))
    nodes = [SimNode(n, n.speed * data.draw(st.floats(0.7, 1.3))) for n in infos]
    jobs = []
    for i in range(data.draw(st.integers(1, 5))):
        shape = data.draw(st.sampled_from(SHAPES))
        if not any(costmodel.best_fit(shape, n.vram_gib, 1) for n in infos):
            continue
        jobs.append(SimJob(f"j{i}", MODELS[shape], shape, data.draw(st.integers(1, 12)), data.draw(st.integers(2, 30)),
                           data.draw(st.integers(0, 1)), data.draw(st.sampled_from(["a", "b"])),
                           data.draw(st.sampled_from([0.0, 0.0, 100.0]))))
    if jobs:
        # shards migrate between nodes (`handoffs`); the engine still sees every step once, in order
        outcome = simulate(nodes, jobs)
        assert outcome.makespan > 0 and outcome.duplicated == 0 and outcome.jobs_done == len(jobs)
        assert outcome.executed == outcome.needed  # no churn: no step computed twice, moves included
