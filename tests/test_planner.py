"""The pure planner: shards sized by VRAM and speed, segments sized by time, one decision per tick."""

from __future__ import annotations

import pytest

from farm.contracts.domain import NodeInfo, NodeState, ReadySegment
from farm.contracts.errors import DoesNotFit
from farm.core import costmodel, planner
from farm.core.costmodel import MemoryMode, Shape
from farm.core.planner import Demand, PlanContext
from farm.core.speed import SpeedBook, reference_decode_seconds, reference_step_seconds
from farm.jobs import demand as jobdemand
from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job

DEMO_NODES = [NodeInfo("sim-8", 8, 1.0), NodeInfo("sim-12", 12, 1.6), NodeInfo("sim-24", 24, 3.5)]
HETERO = [NodeInfo("a8", 8, 1.0), NodeInfo("b12", 12, 1.6), NodeInfo("c16", 16, 2.2), NodeInfo("d24", 24, 3.5)]


def demand(family: str = "sd15", size: tuple[int, int, int] = (512, 512, 1), samples: int = 12, steps: int = 30,
           model: str = "m") -> Demand:
    return Demand(model, Shape(family, *size), steps, tuple(range(samples)))


def by_home(shards: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in shards:
        out.setdefault(s.home, []).append(s)
    return out


# --- issue 2: the demo job -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_shards() -> list:
    job = make_job(prompts=["a", "b", "c", "d"], seeds=3)
    return jobdemand.shard_job("j1", job, get_model("demo-tiny"), DEMO_NODES)


def test_demo_the_24_gib_node_gets_larger_shards_than_the_8_gib_node(demo_shards: list) -> None:
    homes = by_home(demo_shards)
    assert min(s.batch for s in homes["sim-24"]) > max(s.batch for s in homes["sim-8"])


def test_demo_at_least_two_nodes_get_work_and_every_shard_has_two_segments(demo_shards: list) -> None:
    assert len(by_home(demo_shards)) >= 2
    assert all(len(s.bounds) >= 2 for s in demo_shards)


def test_demo_every_sample_is_in_exactly_one_shard(demo_shards: list) -> None:
    assert sorted(i for s in demo_shards for i in s.sample_indices) == list(range(12))
    assert len({s.id for s in demo_shards}) == len(demo_shards)


def test_a_cap_on_segment_steps_still_applies() -> None:
    job = make_job(prompts=["a", "b"], seeds=2, steps=6)
    for shard in jobdemand.shard_job("j", job, get_model("demo-tiny"), DEMO_NODES, 2):
        assert len(shard.bounds) == 3 and all(b - a <= 2 for a, b in shard.bounds)


# --- segment bounds and apportion ----------------------------------------------------------------

@pytest.mark.parametrize(("steps", "cap"), [(2, None), (20, None), (20, 3), (7, 100), (1000, 1)])
def test_segment_bounds_are_contiguous_capped_and_at_least_two(steps: int, cap: int | None) -> None:
    bounds = planner.segment_bounds(steps, cap)
    assert bounds[0][0] == 0 and bounds[-1][1] == steps and len(bounds) >= 2
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(b > a for a, b in bounds)
    if cap and steps >= 2 * cap:
        assert all(b - a <= cap for a, b in bounds)


def test_segment_bounds_refuse_a_single_step() -> None:
    with pytest.raises(ValueError):
        planner.segment_bounds(1)


def test_apportion_sums_exactly_and_follows_weights() -> None:
    assert planner.apportion(10, [1, 1, 2]) == [2, 3, 5] or planner.apportion(10, [1, 1, 2]) == [3, 2, 5]
    assert sum(planner.apportion(7, [1.0, 1.6, 3.5])) == 7
    assert planner.apportion(0, [1, 2]) == [0, 0]


# --- admission -------------------------------------------------------------------------------------

def test_a_job_that_fits_no_node_is_refused_naming_the_vram_it_needs() -> None:
    big = demand("hunyuanvideo15", (848, 480, 121), samples=1, steps=50)
    with pytest.raises(DoesNotFit, match=r"at least 2\d\.\d GiB"):
        planner.plan_shards("j", big, HETERO)


def test_a_job_that_fits_only_some_nodes_goes_only_there() -> None:
    # Even streamed (group offload), HunyuanVideo-1.5 at 832x480x49 needs a 16 GiB card.
    video = demand("hunyuanvideo15", (832, 480, 49), samples=8, steps=50)
    shards = planner.plan_shards("j", video, HETERO)
    assert set(by_home(shards)) == {"c16", "d24"}
    assert all(s.need_gib <= costmodel.usable_gib(16) for s in by_home(shards)["c16"])


def test_an_observed_peak_correction_can_take_a_node_out_of_a_job() -> None:
    video = demand("hunyuanvideo15", (832, 480, 33), samples=6, steps=40)  # 10.2 GiB streamed
    assert "b12" in by_home(planner.plan_shards("j", video, HETERO))
    shards = planner.plan_shards("j", video, HETERO, context=PlanContext(peak_factors={"b12": 1.3}))
    assert "b12" not in by_home(shards)


# --- shard size: largest batch that fits, within a speed-proportional share ------------------------

def test_each_node_takes_a_share_proportional_to_its_speed() -> None:
    # Speed is samples per second at the node's batch: a card that holds larger batches of an image
    # model runs each sample faster, so shares follow 1 / (seconds per sample-step).
    d = demand(samples=830)
    counts = {home: sum(s.batch for s in group) for home, group in by_home(planner.plan_shards("j", d, HETERO)).items()}
    rate = {}
    for node in HETERO:
        fit = costmodel.best_fit(d.shape, node.vram_gib, 830)
        assert fit is not None
        rate[node.name] = 1 / SpeedBook().seconds_per_sample_step(node, d.shape, fit.batch)
    for node in HETERO:
        assert counts[node.name] == pytest.approx(830 * rate[node.name] / sum(rate.values()), abs=2)


def test_video_shares_follow_the_declared_speeds() -> None:
    shards = planner.plan_shards("j", demand("ltxv", (768, 512, 121), samples=66, steps=40), HETERO[1:])
    counts = {home: sum(s.batch for s in group) for home, group in by_home(shards).items()}
    for node in HETERO[1:]:
        assert counts[node.name] == pytest.approx(66 * node.speed / 7.3, abs=1)


def test_image_shards_are_as_large_as_speeds_a_sample_up() -> None:
    d = demand(samples=830)
    for home, group in by_home(planner.plan_shards("j", d, HETERO)).items():
        node = next(n for n in HETERO if n.name == home)
        most = costmodel.best_fit(d.shape, node.vram_gib, 10_000)
        assert most is not None
        assert all(s.need_gib <= costmodel.usable_gib(node.vram_gib) for s in group)
        # a larger batch would run each sample at most BATCH_GAIN faster (steps, decode and, under model
        # offload, the shard's moves over PCIe), and none is beyond the budget
        chosen = max(s.batch for s in group)
        assert chosen <= most.batch
        fits = costmodel.fits(d.shape, node.vram_gib, 10_000)
        seconds = [planner._sample_seconds(d.shape, d.steps, f, node, SpeedBook()) for f in fits]
        assert min(seconds) >= seconds[chosen - 1] * (1 - 2 * planner.BATCH_GAIN)
        assert chosen >= 0.6 * most.batch


def test_video_shards_hold_one_sample_since_batching_does_not_speed_it_up() -> None:
    # Video step time is linear in batch: a shard of one video is one more card can take.
    shards = planner.plan_shards("j", demand("wan21", (832, 480, 81), samples=12, steps=50), HETERO)
    assert {s.batch for s in shards} == {1}


def test_a_small_share_is_one_shard_of_the_whole_share() -> None:
    shards = planner.plan_shards("j", demand(samples=12), HETERO)
    assert all(len(group) == 1 for group in by_home(shards).values())


def test_a_larger_peak_factor_gives_a_node_smaller_shards() -> None:
    d = demand(samples=830)
    plain = max(s.batch for s in planner.plan_shards("j", d, HETERO) if s.home == "d24")
    careful = planner.plan_shards("j", d, HETERO, context=PlanContext(peak_factors={"d24": 1.5}))
    assert max(s.batch for s in careful if s.home == "d24") < plain


def test_memory_mode_is_the_cheapest_that_holds_the_batch() -> None:
    shards = planner.plan_shards("j", demand("sdxl", (1024, 1024, 1), samples=40), HETERO)
    for s in shards:
        node = next(n for n in HETERO if n.name == s.home)
        cheaper = costmodel.MODES[: costmodel.MODES.index(costmodel.MemoryMode(s.memory_mode))]
        assert all(costmodel.max_batch(Shape("sdxl", 1024, 1024), node.vram_gib, m) < s.batch for m in cheaper)


# --- learned speed, backlog and loaded models --------------------------------------------------

def test_learned_speed_moves_work_away_from_a_slow_node() -> None:
    d = demand(samples=200)
    book = SpeedBook()
    for _ in range(10):  # d24 turns out to run sd15 at the speed of the reference card
        book = book.observe("d24", d.shape, 8, 10, 10 * reference_step_seconds(d.shape, 8))
    before = sum(s.batch for s in planner.plan_shards("j", d, HETERO) if s.home == "d24")
    measured = PlanContext(speeds=book)
    after = sum(s.batch for s in planner.plan_shards("j", d, HETERO, context=measured) if s.home == "d24")
    assert after < before * 0.5


def test_queued_home_work_moves_new_work_to_free_nodes() -> None:
    d = demand(samples=100)
    busy = PlanContext(backlog={"d24": 600.0})
    assert sum(s.batch for s in planner.plan_shards("j", d, HETERO, context=busy) if s.home == "d24") == 0


def test_a_node_that_holds_the_model_is_preferred_for_a_small_job() -> None:
    twins = [NodeInfo("x", 24, 2.0), NodeInfo("y", 24, 2.0)]
    video = demand("ltxv", (768, 512, 121), samples=1, steps=40, model="ltx")
    for holder in ("x", "y"):
        shards = planner.plan_shards("j", video, twins, context=PlanContext(loaded={holder: frozenset({"ltx"})}))
        assert [s.home for s in shards] == [holder]


# --- segment length by time ---------------------------------------------------------------------

def test_segments_take_about_the_configured_time_on_their_node() -> None:
    d = demand("wan21", (832, 480, 81), samples=4, steps=50)
    for target in (30.0, 90.0):
        for s in planner.plan_shards("j", d, HETERO, context=PlanContext(segment_seconds=target)):
            node = next(n for n in HETERO if n.name == s.home)
            step = SpeedBook().step_seconds(node, d.shape, s.batch)
            longest = max(b - a for a, b in s.bounds)
            assert longest * step <= target * 1.5 or longest == 1
            assert min(b - a for a, b in s.bounds) * step >= target * 0.5


def test_segment_steps_follow_the_step_time() -> None:
    assert planner.segment_steps(2.0, 30.0) == 15
    assert planner.segment_steps(0.5, 30.0) == 60
    assert planner.segment_steps(100.0, 30.0) == 1


def test_backlog_is_the_remaining_steps_of_home_shards() -> None:
    d = demand(samples=12)
    shards = planner.plan_shards("j", d, HETERO)
    backlog = planner.backlog_seconds([(s, d.shape, 0) for s in shards], HETERO, SpeedBook())
    for s in shards:
        node = next(n for n in HETERO if n.name == s.home)
        decode = reference_decode_seconds(d.shape, s.batch, MemoryMode(s.memory_mode).tiled) / node.speed
        assert backlog[s.home] == pytest.approx(30 * SpeedBook().step_seconds(node, d.shape, s.batch) + decode)
    halfway = planner.backlog_seconds([(s, d.shape, 15) for s in shards], HETERO, SpeedBook())
    assert halfway["d24"] < backlog["d24"] * 0.6


# --- plan_tick -------------------------------------------------------------------------------------

def state(name: str, vram: float, speed: float = 1.0, busy: bool = False, online: bool = True,
          loaded: frozenset[str] = frozenset(), factor: float = 1.0) -> NodeState:
    return NodeState(NodeInfo(name, vram, speed), busy, online, loaded, factor)


def seg(shard: str, home: str, need: float = 2.0, model: str = "m", index: int = 0) -> ReadySegment:
    return ReadySegment(shard, index, home, need, job_id=shard.split("/")[0], model=model)


def test_a_node_runs_its_own_segment_before_a_neighbour_may() -> None:
    out = planner.plan_tick([seg("j/s0", "b"), seg("j/s1", "a")], [state("a", 24, 9.0), state("b", 24)])
    assert {(a.node, a.shard_id) for a in out} == {("a", "j/s1"), ("b", "j/s0")}


def test_waiting_work_goes_first_to_a_node_that_holds_its_model_then_the_fastest() -> None:
    nodes = [state("slow", 24, 1.0, loaded=frozenset({"m"})), state("fast", 24, 3.0), state("home", 24, busy=True)]
    out = planner.plan_tick([seg("j/s0", "home")], nodes)
    assert [(a.node, a.shard_id) for a in out] == [("slow", "j/s0")]
    out = planner.plan_tick([seg("j/s0", "home", model="other")], nodes)
    assert [a.node for a in out] == ["fast"]


def test_queue_order_decides_who_gets_the_only_idle_node() -> None:
    nodes = [state("free", 24), state("busy", 24, busy=True)]
    out = planner.plan_tick([seg("hi/s0", "busy"), seg("lo/s0", "busy")], nodes)
    assert [a.shard_id for a in out] == ["hi/s0"]


def test_a_segment_never_goes_to_a_node_it_does_not_fit_or_that_is_busy_or_offline() -> None:
    # usable budgets: small 6.7 GiB; careful 10.3 GiB but its predictions count double
    nodes = [state("small", 8), state("busy", 24, busy=True), state("gone", 24, online=False),
             state("careful", 12, factor=2.0)]
    assert planner.plan_tick([seg("j/s0", "busy", need=7.0)], nodes) == []
    assert [a.node for a in planner.plan_tick([seg("j/s0", "gone", need=6.0)], nodes)] == ["small"]
    assert [a.node for a in planner.plan_tick([seg("j/s0", "gone", need=5.0)], nodes[1:])] == ["careful"]
    assert planner.plan_tick([seg("j/s0", "careful", need=5.5)], nodes[1:]) == []


def test_no_idle_node_is_left_while_a_segment_that_fits_it_waits() -> None:
    nodes = [state("a", 8), state("b", 12), state("c", 24)]
    ready = [seg("j/s0", "c", need=18.0), seg("j/s1", "c", need=2.0), seg("j/s2", "c", need=2.0)]
    out = planner.plan_tick(ready, nodes)
    assert len(out) == 3 and len({a.node for a in out}) == 3


# --- plan_queue: the whole queue at once ------------------------------------------------------------

def finish_times(plan: dict[str, list], demands: dict[str, Demand]) -> dict[str, float]:
    book = SpeedBook()
    nodes = {n.name: n for n in HETERO}
    out = {n.name: 0.0 for n in HETERO}
    for job_id, shards in plan.items():
        for s in shards:
            out[s.home] += planner.shard_seconds(s, demands[job_id].shape, 0, nodes[s.home], book)
    return out


def test_jobs_only_big_cards_hold_are_placed_first_so_small_cards_take_the_rest() -> None:
    demands = {"img": demand(samples=400, model="sd15"),
               "vid": demand("hunyuanvideo15", (832, 480, 49), samples=2, steps=8, model="hy")}
    together = planner.plan_queue(list(demands.items()), HETERO)
    one_by_one = {"img": planner.plan_shards("img", demands["img"], HETERO)}
    backlog = finish_times(one_by_one, demands)
    one_by_one["vid"] = planner.plan_shards("vid", demands["vid"], HETERO, context=PlanContext(backlog=backlog))
    assert max(finish_times(together, demands).values()) < 0.9 * max(finish_times(one_by_one, demands).values())
    assert {s.home for s in together["vid"]} <= {"c16", "d24"}


def test_a_higher_priority_job_is_placed_first() -> None:
    urgent = Demand("m", Shape("wan21", 832, 480, 81), 50, tuple(range(4)), priority=1)
    common = Demand("m", Shape("wan21", 832, 480, 81), 50, tuple(range(4)))
    plan = planner.plan_queue([("common", common), ("urgent", urgent)], HETERO)
    alone = planner.plan_shards("urgent", urgent, HETERO)
    assert sorted(s.home for s in plan["urgent"]) == sorted(s.home for s in alone)


def test_replanned_shards_continue_the_jobs_shard_numbering() -> None:
    d = Demand("m", Shape("sd15", 512, 512), 30, (5, 6, 7, 8), first_shard=7)
    shards = planner.plan_shards("j", d, HETERO)
    assert [s.id for s in shards] == [f"j/s{7 + i}" for i in range(len(shards))]
    assert sorted(i for s in shards for i in s.sample_indices) == [5, 6, 7, 8]


def test_demo_segments_follow_time_unless_capped() -> None:
    job = make_job(prompts=["a", "b"], seeds=2, steps=20)
    for shard in jobdemand.shard_job("j", job, get_model("demo-tiny"), DEMO_NODES):
        assert len(shard.bounds) == 2  # 20 SD 1.5 steps take a few seconds: the minimum of two segments
    assert planner.DEFAULT_SEGMENT_STEPS is None


# --- plan_tick: memory modes and model affinity ----------------------------------------------------

def test_a_node_takes_a_segment_in_a_leaner_mode_than_its_home_used() -> None:
    needs = (("full", 11.0), ("offload", 6.0))
    ready = [ReadySegment("j/s0", 3, "big", 11.0, needs=needs)]
    out = planner.plan_tick(ready, [state("big", 24, busy=True), state("small", 8)])
    assert [(a.node, a.memory_mode) for a in out] == [("small", "offload")]
    out = planner.plan_tick(ready, [state("big", 24), state("small", 8)])
    assert [(a.node, a.memory_mode) for a in out] == [("big", "full")]


def test_a_node_keeps_to_the_model_it_holds_among_its_own_segments_of_one_priority() -> None:
    ready = [seg("a/s0", "n", model="x"), seg("b/s0", "n", model="y")]
    out = planner.plan_tick(ready, [state("n", 24, loaded=frozenset({"y"}))])
    assert [a.shard_id for a in out] == ["b/s0"]
    urgent = [ReadySegment("a/s0", 0, "n", 2.0, "a", "x", priority=1), ReadySegment("b/s0", 0, "n", 2.0, "b", "y")]
    out = planner.plan_tick(urgent, [state("n", 24, loaded=frozenset({"y"}))])
    assert [a.shard_id for a in out] == ["a/s0"]


def test_a_node_finishes_a_shard_it_has_begun_before_the_queues_next_job() -> None:
    # Paused for the queue's earlier jobs, a begun video would end late, on whichever card is free then.
    ready = [seg("a/s0", "n", model="x"), seg("b/s0", "n", model="x", index=4)]
    out = planner.plan_tick(ready, [state("n", 24)], finish=lambda s, n: 10.0)
    assert [(a.shard_id, a.index) for a in out] == [("b/s0", 4)]
    urgent = [ReadySegment("a/s0", 0, "n", 2.0, "a", "x", priority=1), ReadySegment("b/s0", 4, "n", 2.0, "b", "x")]
    out = planner.plan_tick(urgent, [state("n", 24)])
    assert [a.shard_id for a in out] == ["a/s0"]  # a higher priority still comes first


def test_without_predictions_a_shard_stays_home_and_others_take_their_own() -> None:
    # moves that predictions justify are in tests/test_migration.py
    ready = [seg("j/s0", "slow", index=3)]
    out = planner.plan_tick(ready, [state("slow", 12, 1.0), state("fast", 24, 3.5)])
    assert [a.node for a in out] == ["slow"]
    busy_elsewhere = [seg("j/s0", "slow", index=3), seg("k/s0", "fast")]
    out = planner.plan_tick(busy_elsewhere, [state("slow", 12, 1.0), state("fast", 24, 3.5)])
    assert {(a.node, a.shard_id) for a in out} == {("slow", "j/s0"), ("fast", "k/s0")}


# --- speeds known early: a calibration at join, then the first segments ------------------------------

def test_a_calibration_seeds_every_family_until_its_first_segment_measures_it() -> None:
    liar = NodeInfo("n", 24, 4.0)  # declares 4, calibrates at 2 seconds per reference-second (speed 0.5)
    book = SpeedBook().calibrate("n", 2.0)
    assert book.factor(liar, "sd15") == book.factor(liar, "wan21") == 2.0
    shape = Shape("sd15", 512, 512)
    book = book.observe("n", shape, 1, 10, 10 * reference_step_seconds(shape, 1) * 1.5)
    assert book.factor(liar, "sd15") == pytest.approx(1.5) and book.factor(liar, "wan21") == 2.0
    assert SpeedBook().calibrate("n", 0.0) == SpeedBook() == SpeedBook().calibrate("n", float("nan"))


def test_a_node_whose_declared_speed_is_off_by_half_is_known_at_join_and_after_its_first_segments() -> None:
    from farm.runtime.coordinator import Coordinator
    from farm.runtime.simulate import CountingSink, SimExecutor, SimJob, SimNode

    wan = Shape("wan21", 832, 480, 81, dtype="fp8")
    nodes = [SimNode(NodeInfo("liar", 24, 2.0), 1.0), SimNode(NodeInfo("honest", 16, 1.5), 1.5)]
    executor = SimExecutor(nodes, [SimJob("v", "wan", wan, 4, 50)])
    c = Coordinator(executor, CountingSink(), clock=lambda: executor.now)
    executor.coordinator = c
    c.tick(0)  # the probes go out and come back with each worker's calibration
    liar = c.state.nodes["liar"].info
    assert c.state.nodes["liar"].ready
    assert c.state.speeds.factor(liar, "wan21") == pytest.approx(1.0, rel=0.05)  # declared: 0.5, off by half
    c.submit(SimJob("v", "wan", wan, 4, 50).spec(), "v", wan)
    for _ in range(500):
        if any(s.runs and s.runs[0].node == "liar" for s in c.state.jobs["v"].shards.values()):
            break
        c.tick(0)
    assert c.state.speeds.factors[("liar", "wan21")] == pytest.approx(1.0, rel=0.05)


def test_a_node_starts_a_much_longer_shard_of_its_own_first_when_it_can_predict_lengths() -> None:
    ready = [seg("img/s0", "n"), seg("vid/s0", "n")]
    left = {"img/s0": 20.0, "vid/s0": 20.0 * planner.LONG_FIRST}

    def finish(s: ReadySegment, n: NodeState) -> float:
        return left[s.shard_id]

    assert [a.shard_id for a in planner.plan_tick(ready, [state("n", 24)])] == ["img/s0"]
    assert [a.shard_id for a in planner.plan_tick(ready, [state("n", 24)], finish=finish)] == ["vid/s0"]
    left["vid/s0"] = 20.0 * planner.LONG_FIRST * 0.9  # comparable lengths keep the queue's order
    assert [a.shard_id for a in planner.plan_tick(ready, [state("n", 24)], finish=finish)] == ["img/s0"]
