"""How many samples of each job each node runs, for a whole priority level of the queue at once.

Placing jobs one after another (`planner.split_samples`) cannot see that a model loaded on a second
card for one job is a load the next job of that model then needs nowhere else, or that a card which
runs videos nearly as well as the fastest one should take the videos so the fastest takes the images
it runs far better. Both are decisions about the queue as a whole. So this module decides the counts
for every job of a priority at once, as a small mixed-integer program solved by HiGHS (through
scipy): minimise the time the last node finishes, where a node's time is

    its queued work + for each job: samples * seconds per sample + shards * seconds per shard
                    + for each model it runs and does not hold: the load (and fetch)

with a job's samples summing to its count, shards of at most the node's batch, and a load paid by a
node that runs any sample of the model. The program is pure (a function of plain numbers, solved to
a node limit, so the same queue gets the same plan); the planner keeps its plan unless placing the
jobs one by one finishes sooner by the same prices (`makespan`). The same program with samples split
freely gives the benchmark's lower bound with loads (`least_makespan`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp
from scipy.sparse import coo_array

# A solve stops within GAP of the optimum or after NODES branch-and-bound nodes (so the same queue gets
# the same plan on any machine), and after TIME_LIMIT_S at most (a replan happens when a job arrives
# or a node runs out of work, and the farm's loop waits on it).
GAP = 0.002
NODES = 30
TIME_LIMIT_S = 2.0
# The bound (`least_makespan`) is solved closer: it is computed once per benchmark workload.
BOUND_GAP = 1e-4
BOUND_NODES = 50
BOUND_TIME_LIMIT_S = 60.0
# Weight of the total busy seconds beside the makespan: among plans that finish together, the one
# that spends the least (fewer loads, fuller batches) wins.
SPEND_WEIGHT = 0.01


@dataclass(frozen=True)
class Cost:
    """What a job costs on one node: seconds per sample (steps and decode), seconds per shard beyond
    its samples (the per-step cost of a batch, weights streamed), the most samples one shard holds,
    and the seconds to get its model onto the node first (0 when it holds it)."""

    per_sample: float
    per_shard: float
    batch: int
    load: float


@dataclass(frozen=True)
class Item:
    """A job to place: its sample count, its model, and its cost on each node (None: not eligible)."""

    samples: int
    model: str
    costs: tuple[Cost | None, ...]


def balance(items: Sequence[Item], start: Sequence[float], time_limit: float = TIME_LIMIT_S) -> list[list[int]] | None:
    """Samples per node for each item ([item][node], each row summing to its count) that minimise the
    latest finish, nodes starting at `start` seconds: the optimum, or the best plan the solver found
    within its limits; None when it found none or a price is not a finite number of seconds.

    Items of one model that cost the same everywhere (jobs of one kind) are solved as one: the program
    stays a few kinds by the nodes however long the queue, and a node's count of a kind goes to as few
    of its jobs as a walk through both in order gives (`_share`)."""
    numbers = [*start, *(x for item in items for c in item.costs if c is not None
                         for x in (c.per_sample, c.per_shard, c.load))]
    if not all(math.isfinite(x) and x >= 0 for x in numbers):
        return None  # a price the program cannot hold: the caller places the jobs one by one
    kinds = _kinds(items)
    counts = _solve([merged for merged, _ in kinds], start, time_limit)
    if counts is None:
        return None
    out: list[list[int]] = [[] for _ in items]
    for (_, members), row in zip(kinds, counts):
        for i, shares in zip(members, _share([items[i].samples for i in members], row)):
            out[i] = shares
    return out


def makespan(items: Sequence[Item], counts: Sequence[Sequence[int]], start: Sequence[float]) -> float:
    """The latest finish of a plan ([item][node] sample counts) by the program's prices: each item's
    samples on a node in shards of at most its batch, and each model a node runs loaded once."""
    finish = list(start)
    for n in range(len(start)):
        loads: dict[str, float] = {}
        for item, row in zip(items, counts):
            cost = item.costs[n]
            if row[n] and cost is not None:
                finish[n] += row[n] * cost.per_sample + math.ceil(row[n] / cost.batch) * cost.per_shard
                loads[item.model] = min(loads.get(item.model, cost.load), cost.load)
        finish[n] += sum(loads.values())
    return max(finish)


def _kinds(items: Sequence[Item]) -> list[tuple[Item, list[int]]]:
    """Items of one model and the same costs everywhere as one item of their summed samples, with the
    indices of its members (in order)."""
    kinds: dict[tuple[str, tuple[Cost | None, ...]], list[int]] = {}
    for i, item in enumerate(items):
        kinds.setdefault((item.model, item.costs), []).append(i)
    return [(Item(sum(items[i].samples for i in members), model, costs), members)
            for (model, costs), members in kinds.items()]


def _share(samples: Sequence[int], per_node: Sequence[int]) -> list[list[int]]:
    """Split a kind's per-node counts among its jobs (`samples` each, in the order given): both are walked
    in order, each job taking what is left of the current node's count before moving on, so a job
    reaches as few nodes as the counts allow (a node with two jobs' fragments pays at most one part-batch more)."""
    out = [[0] * len(per_node) for _ in samples]
    left = list(per_node)
    n = 0
    for j, want in enumerate(samples):
        while want:
            while left[n] == 0:
                n += 1
            take = min(want, left[n])
            out[j][n] += take
            left[n] -= take
            want -= take
    return out


def least_makespan(items: Sequence[Item], time_limit: float = BOUND_TIME_LIMIT_S) -> float:
    """A latest finish no plan of `items` on idle nodes beats, loads counted: the program with every
    amount split freely (fractions of samples, steps on one node and the decode on another) and only
    the loads whole, a node paying the load of each model it runs any of. HiGHS's dual bound, which
    holds even when the solver stops early (0 when it found nothing)."""
    kinds = [kind for kind, _ in _kinds(items)]
    start = [0.0] * len(items[0].costs)
    program = _Program(kinds, start, integral=False, spend_weight=0.0, horizon=_greedy(kinds, start))
    result = program.solve(time_limit, BOUND_GAP, BOUND_NODES)
    bound = getattr(result, "mip_dual_bound", None)
    return float(bound) if bound is not None and math.isfinite(bound) else 0.0


def _solve(items: Sequence[Item], start: Sequence[float], time_limit: float) -> list[list[int]] | None:
    """`balance` for items that are all different kinds."""
    program = _Program(items, start, integral=True, spend_weight=SPEND_WEIGHT, horizon=_greedy(items, start))
    result = program.solve(time_limit)
    if result.x is None:
        return None
    out = [[0] * len(start) for _ in items]
    for (kind, i, n), j in program.index.items():
        if kind == "x":
            out[i][n] = int(round(result.x[j]))
    return out


def _greedy(items: Sequence[Item], start: Sequence[float]) -> float:
    """The latest finish of a quick plan, a ceiling for the program's: items with the costliest samples
    first, a batch at a time, each to the node where it finishes earliest (its load counted)."""
    clock = list(start)
    held: set[tuple[int, str]] = set()
    for item in sorted(items, key=lambda it: -max(c.per_sample for c in it.costs if c is not None)):
        left = item.samples
        while left:
            finish, n, chunk = min((clock[n] + (0.0 if (n, item.model) in held else c.load) + c.per_shard
                                    + min(c.batch, left) * c.per_sample, n, min(c.batch, left))
                                   for n, c in enumerate(item.costs) if c is not None)
            clock[n] = finish
            held.add((n, item.model))
            left -= chunk
    return max(clock)


class _Program:
    """The mixed-integer program of the module docstring over `items` (all different kinds).

    Columns: x (samples of an item on a node; integral in a plan, free in the bound), k (its shards
    there), z (the node loads the model: 0 or 1), and T (the latest finish)."""

    def __init__(self, items: Sequence[Item], start: Sequence[float], integral: bool, spend_weight: float,
                 horizon: float = math.inf) -> None:
        nodes = len(start)
        columns: list[tuple[str, int, int]] = []  # ("x" samples | "k" shards, item, node)
        for i, item in enumerate(items):
            for n, cost in enumerate(item.costs):
                if cost is not None:  # shards counted apart only where a shard holds several samples
                    columns += [("x", i, n)] + ([("k", i, n)] if cost.batch > 1 and cost.per_shard > 0 else [])
        loads = sorted({(n, item.model) for item in items for n, c in enumerate(item.costs)
                        if c is not None and c.load > 0})
        load_of = {key: min(c.load for item in items if item.model == key[1]
                            for n, c in enumerate(item.costs) if n == key[0] and c is not None) for key in loads}
        self.index = index = {col: j for j, col in enumerate(columns)}
        # The most samples of an item a node can run before `horizon` (a plan's ceiling): the program's
        # relaxation is only as tight as these.
        most: dict[int, float] = {}
        for (kind, i, n), j in index.items():
            cost = items[i].costs[n]
            assert cost is not None
            spare = horizon - start[n] - cost.load - cost.per_shard
            room = spare / cost.per_sample if cost.per_sample > 0 else math.inf
            room = math.floor(room + 1e-9) if integral and room < math.inf else room
            most[j] = float(items[i].samples if kind == "k" else max(0.0, min(items[i].samples, room)))
        z0, t = len(columns), len(columns) + len(loads)
        width = t + 1
        rows: list[tuple[dict[int, float], float, float]] = []
        for i, item in enumerate(items):  # every sample placed once
            rows.append(({index["x", i, n]: 1.0 for n, c in enumerate(item.costs) if c is not None},
                         item.samples, item.samples))
        busy: list[dict[int, float]] = [{t: -1.0} for _ in range(nodes)]
        spend = [0.0] * width
        for (kind, i, n), j in index.items():
            cost = items[i].costs[n]
            assert cost is not None
            apart = ("k", i, n) in index  # else each sample is a shard of its own
            seconds = cost.per_shard if kind == "k" else cost.per_sample + (0.0 if apart else cost.per_shard)
            busy[n][j] = seconds
            spend[j] = seconds
            if kind == "k":  # shards hold at most a batch each
                rows.append(({index["x", i, n]: 1.0, j: -float(cost.batch)}, -math.inf, 0.0))
        for z, (n, model) in enumerate(loads):
            busy[n][z0 + z] = load_of[n, model]
            spend[z0 + z] = load_of[n, model]
            for i, item in enumerate(items):  # a node that runs a sample of the model loads it
                if item.model == model and ("x", i, n) in index:
                    rows.append(({index["x", i, n]: 1.0, z0 + z: -most[index["x", i, n]]}, -math.inf, 0.0))
        rows += [(coefficients, -math.inf, -begin) for coefficients, begin in zip(busy, start)]
        r, c, v = zip(*((row, col, value) for row, (coefficients, _, _) in enumerate(rows)
                        for col, value in coefficients.items()))
        self.matrix = coo_array((v, (r, c)), shape=(len(rows), width))
        self.lower = [lo for _, lo, _ in rows]
        self.upper = [hi for _, _, hi in rows]
        self.objective = [spend_weight * seconds / nodes for seconds in spend[:t]] + [1.0]
        self.bounds = Bounds([0.0] * width, [most[j] for j in range(z0)] + [1.0] * len(loads) + [horizon])
        self.integrality = [int(integral)] * z0 + [1] * len(loads) + [0]

    def solve(self, time_limit: float, gap: float = GAP, nodes: int = NODES) -> OptimizeResult:
        return milp(self.objective, integrality=self.integrality, bounds=self.bounds,
                    constraints=LinearConstraint(self.matrix, self.lower, self.upper),
                    options={"time_limit": time_limit, "mip_rel_gap": gap, "node_limit": nodes})
