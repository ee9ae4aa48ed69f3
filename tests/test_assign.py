"""The whole-queue assignment (`farm.core.assign`, HiGHS through scipy) and the planner that uses it:
every sample placed once on a node that holds it, and the trade-offs between jobs that placing them
one by one cannot make."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.contracts.domain import NodeInfo
from farm.core import assign, planner
from farm.core.assign import Cost, Item
from farm.core.costmodel import Shape
from farm.core.planner import Demand

WAN = Shape("wan21", 832, 480, 81, dtype="fp8")


costs = st.one_of(st.none(), st.builds(Cost, st.floats(0.5, 50), st.floats(0, 5), st.integers(1, 8), st.floats(0, 20)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.sampled_from("abc"), st.lists(costs, min_size=3, max_size=3)),
                min_size=1, max_size=6),
       st.lists(st.floats(0, 100), min_size=3, max_size=3))
def test_every_sample_goes_once_to_a_node_that_holds_it_and_no_plan_found_by_hand_is_shorter(
        jobs: list, start: list[float]) -> None:
    items = [Item(samples, model, tuple(c)) for samples, model, c in jobs if any(x is not None for x in c)]
    if not items:
        return
    counts = assign.balance(items, start)
    assert counts is not None
    for item, row in zip(items, counts):
        assert sum(row) == item.samples
        assert all(k == 0 for k, cost in zip(row, item.costs) if cost is None)
    if len({(item.model, item.costs) for item in items}) < len(items):
        return  # jobs of one kind are solved as one, their shards priced together (the planner compares)
    # Each whole job on the node where it finishes first, in turn: a plan the solver must match or beat
    # (within what it may stop at, its spend weighed beside the makespan).
    by_hand: list[list[int]] = []
    for item in items:
        trials = [[*by_hand, [item.samples if m == n else 0 for m in range(3)]]
                  for n, cost in enumerate(item.costs) if cost is not None]
        by_hand = min(trials, key=lambda plan: assign.makespan(items[: len(plan)], plan, start))
    slack = (1 + assign.GAP) * (1 + assign.SPEND_WEIGHT)
    assert assign.makespan(items, counts, start) <= assign.makespan(items, by_hand, start) * slack + 1e-6


def test_the_same_queue_gets_the_same_plan() -> None:
    items = [Item(40 + i, "ab"[i % 2], (Cost(1.0 + i / 10, 0.5, 8, 4.0), Cost(2.0, 1.0, 4, 4.0), None))
             for i in range(6)]
    assert assign.balance(items, [0.0, 5.0, 0.0]) == assign.balance(items, [0.0, 5.0, 0.0])


def test_a_price_that_is_not_a_number_of_seconds_leaves_the_queue_to_the_one_by_one_planner() -> None:
    good = Cost(1.0, 0.0, 1, 0.0)
    assert assign.balance([Item(2, "a", (good, Cost(float("nan"), 0.0, 1, 0.0)))], [0.0, 0.0]) is None
    assert assign.balance([Item(2, "a", (good, good))], [0.0, float("inf")]) is None
    assert assign.balance([Item(2, "a", (good, good))], [0.0, 0.0]) == [[1, 1]]


def test_two_models_on_two_cards_load_one_model_each() -> None:
    # One by one, each job's two videos go one to each card and both cards load both models; as a
    # queue, each card keeps one model and loads it once.
    nodes = [NodeInfo("a", 24, 1.0), NodeInfo("b", 24, 1.0)]
    queue = [("x", Demand("model-x", WAN, 50, (0, 1))), ("y", Demand("model-y", WAN, 50, (0, 1)))]
    plans = planner.plan_queue(queue, nodes)
    assert {len({s.home for s in plans[job]}) for job in ("x", "y")} == {1}
    assert {plans["x"][0].home, plans["y"][0].home} == {"a", "b"}


def test_a_job_of_one_kind_reaches_as_few_nodes_as_the_counts_allow() -> None:
    shares = assign._share([5, 3, 4], [6, 6])
    assert shares == [[5, 0], [1, 2], [0, 4]]
    assert [sum(col) for col in zip(*shares)] == [6, 6]
