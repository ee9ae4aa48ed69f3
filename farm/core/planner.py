"""The pure planner: turns jobs and the node table into shards, and ready segments into assignments.

Two decisions, both pure functions of plain tables so they are tested without Ray or torch:

* `plan_queue` / `shard_job` (at admission; again over unstarted work when a job arrives or a node
  runs out of home work): a job goes only to nodes whose VRAM holds one sample in some memory mode,
  or its denoise when its decode or encode (or both) fits another node: then the shard's last
  segment is an empty `(end, end)` that only decodes, from the checkpoint, or its first an empty
  `(0, 0)` that only encodes and returns the first checkpoint, placed like any waiting segment.
  How many samples each node runs is decided for all the jobs of a priority at once
  (`farm.core.assign.balance`, a mixed-integer program): the latest finish is as early as it can be,
  counting each node's queued home work, its seconds per sample and per shard at its batch, and a
  model load on each node that runs a model it does not hold. A lone job, or a level whose
  one-by-one placement finishes sooner by the same prices (the solver stopped at its limits), goes
  chunk by chunk where the farm would finish earliest
  (`split_samples`): a chunk is a whole batch while much work is left to place and shrinks to one
  sample for the last; on idle nodes a lone job gets about a share proportional to speed. A node's
  share is cut into shards of the largest batch its budget holds (unless a smaller one runs a
  sample as fast: video), and each shard into segments of about `segment_seconds` on it (at least two).
* `plan_tick` (every tick): each idle node takes one ready segment; `ready` comes in queue order
  (`farm.core.order`). A node's own shards go first (batch and segment length were sized for it; a
  shard it has begun before any other, so a video is not left half done while the node runs the
  queue's next jobs and then finished late, on whichever card is free; else one LONG_FIRST times
  longer than the queue's choice before it, so long videos do not start last), unless
  an idle node with nothing of its own is predicted to finish the shard's remaining steps MOVE_GAIN
  sooner, hand-off and model load included (a migration at a segment boundary: the shard with the most
  time left picks first, so a fast card that frees up takes over the longest samples of slow ones);
  any other waiting segment then goes to an idle node it fits in some memory mode, preferring one that
  already holds its model, then the fastest. So no node idles while a segment that fits it waits.
  A decode-only or encode-only segment goes first, the same way: it takes seconds, its shard's
  home waits on it, and only the cards with the most room hold it, so it must not wait behind their
  own long work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from farm.contracts.domain import Assignment, NodeInfo, NodeState, ReadySegment, Shard
from farm.contracts.ids import shard_id
from farm.core import assign, costmodel, model_lists
from farm.core.costmodel import Fit, Shape
from farm.core.speed import SpeedBook, load_seconds, offload_seconds, reference_decode_seconds, streamed_step_seconds

# Target duration of one segment: bounds the work a crash loses and how long an owner waits to get
# the GPU back, while keeping hand-offs (a checkpoint each) rare.
SEGMENT_SECONDS = 30.0
# No cap on steps per segment by default: the length comes from SEGMENT_SECONDS.
DEFAULT_SEGMENT_STEPS: int | None = None
# A larger batch is chosen only while it runs a sample at least this much faster.
BATCH_GAIN = 0.01
# A shard moves off its home only when another node is predicted to finish it this fraction of the
# home's time sooner: predictions err, and a move that merely breaks even costs a hand-off and a load.
MOVE_GAIN = 0.15
# Among a node's own segments of its top priority, a shard predicted to take this many times longer
# than the queue's choice starts first (longest first: a long video started last sets the makespan,
# while shards of comparable length keep the queue's order).
LONG_FIRST = 3.0

# Predicted seconds from now until a ready segment's shard is done (every remaining step and the
# decode) on a node, the checkpoint hand-off and a model load there included (`decide.finish_seconds`).
Finish = Callable[[ReadySegment, NodeState], float]


@dataclass(frozen=True)
class PlanContext:
    """What the planner knows beyond the node table.

    speeds        learned seconds per step per node and family (`SpeedBook.observe`)
    backlog       seconds of home work each node already has queued ahead of this job
    loaded        models each node holds in memory (a node without the model pays a load)
    peak_factors  per-node corrections of the cost model (`costmodel.peak_correction`)
    synced        models only the head holds -> their bytes (a node without one fetches it first)
    stored        those of them each node holds on disk
    links         bytes per second each node's last transfer measured
    lists         each node's owner's (allow, deny) model patterns (`farm.core.model_lists`)
    place_stages  a decode or encode that fits no memory mode of a shard's node runs as a segment of its
                  own on a node it fits (False: every shard encodes and decodes where it denoises,
                  bench/stages.py's baseline)
    """

    speeds: SpeedBook = field(default_factory=SpeedBook)
    segment_seconds: float = SEGMENT_SECONDS
    backlog: Mapping[str, float] = field(default_factory=dict)
    loaded: Mapping[str, frozenset[str]] = field(default_factory=dict)
    peak_factors: Mapping[str, float] = field(default_factory=dict)
    synced: Mapping[str, int] = field(default_factory=dict)
    stored: Mapping[str, frozenset[str]] = field(default_factory=dict)
    links: Mapping[str, float] = field(default_factory=dict)
    lists: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    place_stages: bool = True

    def allows(self, node: str, model: str, adapters: tuple[str, ...] = ()) -> bool:
        """Whether the node's owner lets it hold `model` and the job's LoRA adapters."""
        allow, deny = self.lists.get(node, ((), ()))
        return model_lists.allows_job(model, adapters, allow, deny)

    def fetch_seconds(self, node: str, model: str) -> float:
        """Seconds the node needs to fetch `model` from the head first (0 when it holds it or every PC does)."""
        if model not in self.synced or model in self.stored.get(node, frozenset()):
            return 0.0
        return model_lists.transfer_seconds(self.synced[model], self.links.get(node, 0.0))


@dataclass(frozen=True)
class Demand:
    """What sharding needs of a job: which model, its costed shape, its steps, the sample indices
    still to place, its priority, and the index its next shard gets (shard ids stay unique when a
    job's unstarted samples are planned again)."""

    model: str
    shape: Shape
    steps: int
    samples: tuple[int, ...]
    priority: int = 0
    first_shard: int = 0
    adapters: tuple[str, ...] = ()  # the job's LoRA adapters' names (an owner may deny them)


def segment_bounds(steps: int, max_steps: int | None = None) -> tuple[tuple[int, int], ...]:
    """Cut `steps` into at least two near-equal contiguous ranges of at most `max_steps` steps."""
    if steps < 2:
        raise ValueError("a shard needs at least 2 steps to run as two segments")
    count = max(2, math.ceil(steps / max(1, max_steps))) if max_steps else 2
    cuts = [round(i * steps / count) for i in range(count + 1)]
    return tuple((a, b) for a, b in zip(cuts, cuts[1:]))


def segment_steps(step_seconds: float, target_seconds: float = SEGMENT_SECONDS) -> int:
    """How many steps of `step_seconds` make a segment of about `target_seconds` (at least one)."""
    return max(1, round(target_seconds / step_seconds))


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` items by `weights` with the largest-remainder method (sums exactly to total)."""
    if total == 0 or not weights:
        return [0] * len(weights)
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], -weights[i]))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True)
class _Option:
    """How a node would run a job: its batch (`fit`) and the fits of every smaller batch."""

    node: NodeInfo
    fit: Fit
    smaller: tuple[Fit, ...]


def _sample_seconds(shape: Shape, steps: int, fit: Fit, node: NodeInfo, speeds: SpeedBook) -> float:
    """Expected seconds of one sample on a node in a shard of `fit`: its steps (in a streamed memory
    mode each step also moves the denoiser's weights over PCIe, at any card's speed), its decode, and
    its share of the shard's component moves under model offload."""
    decode = reference_decode_seconds(shape, 1, fit.mode.tiled) * speeds.factor(node, shape.family)
    streamed = streamed_step_seconds(shape) / fit.batch if fit.mode.streamed else 0.0
    moved = offload_seconds(shape) / fit.batch if fit.mode.offload and not fit.mode.streamed else 0.0
    return (speeds.seconds_per_sample_step(node, shape, fit.batch) + streamed) * steps + decode + moved


def stage_batch(shape: Shape, nodes: Iterable[NodeInfo], context: PlanContext, want: int,
                roles: frozenset[costmodel.Role]) -> int:
    """The largest batch (up to `want`) whose stage of `roles` (`costmodel.DECODE_ROLES`, `ENCODE_ROLES`)
    alone fits some node in some memory mode: a shard whose own node cannot run that stage is no
    larger, so its stage-only segment has a node to run on."""
    return max((costmodel.max_batch(shape, n.vram_gib, mode, want, context.peak_factors.get(n.name, 1.0), roles)
                for n in nodes for mode in costmodel.MODES), default=0)


def node_fits(shape: Shape, node: NodeInfo, want: int, context: PlanContext, decodable: int,
              encodable: int) -> list[Fit]:
    """`costmodel.fits` of a node, batch by batch. With stage placement, a node that holds no sample
    whole in any memory mode holds the batches it runs without its decode (`Fit.decodes` False), else
    without its encode (`Fit.encodes` False), else without either: up to `decodable` and `encodable`,
    the largest batches whose decode and encode fit some node. A node that holds a sample whole keeps
    its shards whole (no hand-off around its encode or decode), even where dropping a stage would
    fit a larger batch; one that holds it without its decode keeps its encode."""
    correction = context.peak_factors.get(node.name, 1.0)
    whole = costmodel.fits(shape, node.vram_gib, want, correction)
    if whole or not context.place_stages:
        return whole
    apart = ((costmodel.DENOISE_ROLES, decodable), (costmodel.ALL_ROLES - costmodel.ENCODE_ROLES, encodable),
             (costmodel.DENOISER_ROLES, min(decodable, encodable)))
    for roles, cap in apart:
        if cap and (fits := costmodel.fits(shape, node.vram_gib, min(want, cap), correction, roles)):
            return fits
    return []


def _options(demand: Demand, nodes: Sequence[NodeInfo], context: PlanContext) -> list[_Option]:
    """The nodes that hold at least one sample, each with its batch: the largest its budget holds,
    except where a smaller batch runs a sample as fast (within BATCH_GAIN). Image models get faster
    per sample up to the largest batch; video models do not, and a shard of one video is one that
    another card can take. A node that holds the denoiser but not the decode is one where the decode
    fits some node, likewise its encode (`node_fits`). Raises DoesNotFit (admission) when no node holds a sample."""
    out = []
    decodable = encodable = 0
    if context.place_stages:
        want = len(demand.samples)
        decodable = stage_batch(demand.shape, nodes, context, want, costmodel.DECODE_ROLES)
        encodable = stage_batch(demand.shape, nodes, context, want, costmodel.ENCODE_ROLES)
    for node in nodes:
        if not context.allows(node.name, demand.model, demand.adapters):
            continue  # its owner's list refuses the model
        fits = node_fits(demand.shape, node, len(demand.samples), context, decodable, encodable)
        if not fits:
            continue
        seconds = [_sample_seconds(demand.shape, demand.steps, f, node, context.speeds) for f in fits]
        fastest = min(seconds)
        chosen = next(f for f, t in zip(fits, seconds) if t <= fastest * (1 + BATCH_GAIN))
        out.append(_Option(node, chosen, tuple(fits[: chosen.batch])))
    if not out:
        raise costmodel.does_not_fit(demand.shape, [n.vram_gib for n in nodes])
    return out


def split_samples(demand: Demand, options: Sequence[_Option], context: PlanContext, after: float = 0.0) -> list[int]:
    """How many samples each node gets: chunk by chunk, each chunk where the farm would finish earliest.

    A node's clock starts at its backlog (plus the transfer where its disk lacks a model only the head
    holds), its first chunk pays the model load where it does not hold the model, and each sample adds
    its steps and decode at the node's learned (or declared) speed and batch. A node's chunk is the
    samples it would run in its share of the work still to place (this job's samples left plus `after`,
    the reference-seconds of the jobs of its priority placed after it, spread over the job's nodes by
    speed), at most its batch: whole batches while much is left, single samples for the last.

    A chunk goes where the later of two finishes is earliest: the node's own, and the level all the
    job's nodes would reach with the work left spread over them by speed, which the chunk raises by
    what it wastes (a model load, and the seconds its batch runs a sample slower than the node that
    runs the job best). So while nodes are below that level a job stays on the nodes that hold its
    model, in the batches that run it fastest (placed one sample at a time where each finishes first,
    every job would spread over every node in small batches that pay a batch's per-step cost for a few
    samples, and load its model everywhere), ties going to the slower node so the fast ones keep room
    for the work only they run well; near the level each chunk goes where it finishes first. With no
    backlog, no loads and nothing after it this is about a share proportional to speed.
    """
    clocks = []
    loads = []
    per_sample = []
    for opt in options:
        clocks.append(context.backlog.get(opt.node.name, 0.0) + context.fetch_seconds(opt.node.name, demand.model))
        held = demand.model in context.loaded.get(opt.node.name, frozenset())
        loads.append(0.0 if held else load_seconds(demand.shape))
        per_sample.append(_sample_seconds(demand.shape, demand.steps, opt.fit, opt.node, context.speeds))
    rates = [context.speeds.relative_speed(o.node, demand.shape.family) for o in options]
    reference = _reference_seconds(demand, options, context.speeds)
    capacity = sum(rates)
    counts = [0] * len(options)
    left = len(demand.samples)
    while left:
        share = (after + left * reference) / capacity  # seconds of the work left each node gets
        level = share + sum(r * c for r, c in zip(rates, clocks)) / capacity
        moves = []
        for k, (opt, t, r) in enumerate(zip(options, per_sample, rates)):
            chunk = min(opt.fit.batch, left, max(1, math.floor(share / t)))
            load = loads[k] if counts[k] == 0 else 0.0
            finish = clocks[k] + load + chunk * t
            waste = load + chunk * (t - reference / r)
            moves.append((max(finish, level + waste * r / capacity), opt.node.speed, finish, k, chunk, load))
        *_, k, chunk, load = min(moves)
        counts[k] += chunk
        clocks[k] += load + chunk * per_sample[k]
        left -= chunk
    return counts


def _reference_seconds(demand: Demand, options: Sequence[_Option], speeds: SpeedBook) -> float:
    """Reference-seconds of one sample of the job on the node that runs it most efficiently (its batch)."""
    return min(_sample_seconds(demand.shape, demand.steps, o.fit, o.node, speeds)
               * speeds.relative_speed(o.node, demand.shape.family) for o in options)


def _shards(job_id: str, demand: Demand, options: Sequence[_Option], counts: Sequence[int],
            max_segment_steps: int | None, context: PlanContext) -> list[Shard]:
    """Cut each node's count into as few shards as its batch allows, each into segments."""
    shards: list[Shard] = []
    cursor = 0
    for opt, count in zip(options, counts):
        if count == 0:
            continue
        for size in apportion(count, [1.0] * math.ceil(count / opt.fit.batch)):
            sized = opt.smaller[size - 1]
            per = segment_steps(context.speeds.step_seconds(opt.node, demand.shape, size), context.segment_seconds)
            cap = min(per, max_segment_steps) if max_segment_steps else per
            bounds = segment_bounds(demand.steps, cap)
            roles, decode_needs, encode_needs = costmodel.ALL_ROLES, (), ()
            if not sized.decodes:  # the decode runs on its own, from the last checkpoint, where it fits
                roles, bounds = roles - costmodel.DECODE_ROLES, bounds + ((demand.steps, demand.steps),)
                decode_needs = costmodel.mode_needs(demand.shape, size, costmodel.DECODE_ROLES)
            if not sized.encodes:  # the encode runs on its own, into the first checkpoint, where it fits
                roles, bounds = roles - costmodel.ENCODE_ROLES, ((0, 0),) + bounds
                encode_needs = costmodel.mode_needs(demand.shape, size, costmodel.ENCODE_ROLES)
            shards.append(
                Shard(
                    id=shard_id(job_id, demand.first_shard + len(shards)),
                    job_id=job_id,
                    sample_indices=demand.samples[cursor : cursor + size],
                    home=opt.node.name,
                    bounds=bounds,
                    need_gib=sized.need_gib,
                    memory_mode=str(sized.mode),
                    needs=costmodel.mode_needs(demand.shape, size, roles),
                    decode_needs=decode_needs,
                    encode_needs=encode_needs,
                )
            )
            cursor += size
    return shards


def plan_queue(demands: Sequence[tuple[str, Demand]], nodes: Sequence[NodeInfo], max_segment_steps: int | None = None,
               context: PlanContext = PlanContext()) -> dict[str, list[Shard]]:
    """Shards for every job's unplaced samples at once: (job id, demand) pairs in queue order.

    Placing one job at a time in arrival order fills the large cards with work any card could do,
    and a video job that arrives next then queues behind it while small cards idle. So the jobs of a
    priority are assigned together (`_better`, `farm.core.assign`), higher priorities first, each
    level behind the work of the ones before it, unless placing them one by one finishes sooner:
    the jobs that fit the least capacity (the sum of speeds of the nodes that hold them) first, among
    those the ones whose samples take longest (a sample is indivisible: placed last, a long video lands
    on whichever card is least full and sets the makespan, while short image samples placed after it
    even the cards out), each later job's samples where they finish first behind them. Execution order
    stays the queue order (`plan_tick`). Call it again with the unstarted samples of every queued job
    whenever a job arrives. Raises DoesNotFit.
    """
    options = {job_id: _options(d, nodes, context) for job_id, d in demands}
    capacity = {job_id: sum(context.speeds.relative_speed(o.node, d.shape.family) for o in options[job_id])
                for job_id, d in demands}
    longest = {job_id: max(_sample_seconds(d.shape, d.steps, o.fit, o.node, context.speeds) for o in options[job_id])
               for job_id, d in demands}
    order = sorted(range(len(demands)),
                   key=lambda i: (-demands[i][1].priority, capacity[demands[i][0]], -longest[demands[i][0]], i))
    work = {job_id: len(d.samples) * _reference_seconds(d, options[job_id], context.speeds) for job_id, d in demands}
    backlog = {n.name: context.backlog.get(n.name, 0.0) for n in nodes}
    loaded = {n.name: context.loaded.get(n.name, frozenset()) for n in nodes}
    stored = {n.name: context.stored.get(n.name, frozenset()) for n in nodes}
    by_name = {n.name: n for n in nodes}
    out: dict[str, list[Shard]] = {}
    for priority in sorted({d.priority for _, d in demands}, reverse=True):
        level = [demands[i] for i in order if demands[i][1].priority == priority]
        step = replace(context, backlog=backlog, loaded=loaded, stored=stored)
        counts, shards = _one_by_one(level, options, work, by_name, step, max_segment_steps)
        solved = _better(level, options, nodes, step, counts) if len(level) > 1 else None
        for job_id, demand in level:
            out[job_id] = shards[job_id] if solved is None else _shards(
                job_id, demand, options[job_id], solved[job_id], max_segment_steps, step)
            _account(out[job_id], demand, by_name, step.speeds, backlog, loaded, stored)
    return out


def _account(shards: Sequence[Shard], demand: Demand, by_name: Mapping[str, NodeInfo], speeds: SpeedBook,
             backlog: dict[str, float], loaded: dict[str, frozenset[str]], stored: dict[str, frozenset[str]]) -> None:
    """Add planned shards to their homes' queued seconds, and their model to what those homes hold."""
    for shard in shards:
        backlog[shard.home] += shard_seconds(shard, demand.shape, 0, by_name[shard.home], speeds)
        loaded[shard.home] = loaded[shard.home] | {demand.model}
        stored[shard.home] = stored[shard.home] | {demand.model}


def _one_by_one(level: Sequence[tuple[str, Demand]], options: Mapping[str, Sequence[_Option]],
                work: Mapping[str, float], by_name: Mapping[str, NodeInfo], context: PlanContext,
                max_segment_steps: int | None) -> tuple[dict[str, list[int]], dict[str, list[Shard]]]:
    """Counts per option of each job of one priority, and its shards, placed in turn where they finish
    first behind the ones before (`split_samples`), each job's level counting the work of the jobs after it."""
    backlog, loaded, stored = dict(context.backlog), dict(context.loaded), dict(context.stored)
    after = sum(work[job_id] for job_id, _ in level)
    counts, shards = {}, {}
    for job_id, demand in level:
        step = replace(context, backlog=backlog, loaded=loaded, stored=stored)
        after -= work[job_id]
        counts[job_id] = split_samples(demand, options[job_id], step, after)
        shards[job_id] = _shards(job_id, demand, options[job_id], counts[job_id], max_segment_steps, step)
        _account(shards[job_id], demand, by_name, step.speeds, backlog, loaded, stored)
    return counts, shards


def _cost(demand: Demand, option: _Option, context: PlanContext) -> assign.Cost:
    """The job on the option's node as `assign.balance` prices it: a shard of b samples takes
    per_shard + b * per_sample (steps cost a batch's overhead plus its samples' share; decodes are
    per sample), fitted through a shard of one and a full batch."""
    node, batch = option.node, option.fit.batch

    def shard(size: int) -> float:
        return size * _sample_seconds(demand.shape, demand.steps, option.smaller[size - 1], node, context.speeds)

    one, full = shard(1), shard(batch)
    per_sample = (full - one) / (batch - 1) if batch > 1 else one
    if per_sample > one or per_sample <= 0:  # not linear (another memory mode at one): price the full batch
        per_sample = full / batch
    held = demand.model in context.loaded.get(node.name, frozenset())
    load = (0.0 if held else load_seconds(demand.shape)) + context.fetch_seconds(node.name, demand.model)
    return assign.Cost(per_sample, max(0.0, one - per_sample), batch, load)


def _better(level: Sequence[tuple[str, Demand]], options: Mapping[str, Sequence[_Option]], nodes: Sequence[NodeInfo],
            context: PlanContext, one_by_one: dict[str, list[int]]) -> dict[str, list[int]] | None:
    """The counts of the whole level assigned at once (`assign.balance`); None where `one_by_one` stays:
    it finishes sooner by the same prices (`assign.makespan`: the solver stopped at its limits on a
    worse plan) or the solver had none (a price it cannot hold). On a tie the solver's plan, which also
    spends least."""
    column = {n.name: k for k, n in enumerate(nodes)}
    items = []
    for job_id, demand in level:
        costs: list[assign.Cost | None] = [None] * len(nodes)
        for opt in options[job_id]:
            costs[column[opt.node.name]] = _cost(demand, opt, context)
        items.append(assign.Item(len(demand.samples), demand.model, tuple(costs)))
    start = [context.backlog.get(n.name, 0.0) for n in nodes]
    solved = assign.balance(items, start)
    mine = []
    for job_id, _ in level:
        row = [0] * len(nodes)
        for opt, count in zip(options[job_id], one_by_one[job_id]):
            row[column[opt.node.name]] = count
        mine.append(row)
    if solved is None or assign.makespan(items, mine, start) < assign.makespan(items, solved, start):
        return None
    return {job_id: [row[column[o.node.name]] for o in options[job_id]] for (job_id, _), row in zip(level, solved)}


def plan_shards(job_id: str, demand: Demand, nodes: Sequence[NodeInfo], max_segment_steps: int | None = None,
                context: PlanContext = PlanContext()) -> list[Shard]:
    """Shards of one job for `nodes` (see the module docstring); raises DoesNotFit."""
    return plan_queue([(job_id, demand)], nodes, max_segment_steps, context)[job_id]


def shard_seconds(shard: Shard, shape: Shape, from_step: int, node: NodeInfo, speeds: SpeedBook) -> float:
    """Expected seconds of a shard on `node` from step `from_step`: the steps left (streaming the
    denoiser's weights each step in a streamed memory mode), the decode, and under model offload the
    components' moves over PCIe."""
    mode = costmodel.MemoryMode(shard.memory_mode)
    decode = reference_decode_seconds(shape, shard.batch, mode.tiled) * speeds.factor(node, shape.family)
    step = speeds.step_seconds(node, shape, shard.batch) + (streamed_step_seconds(shape) if mode.streamed else 0.0)
    moved = offload_seconds(shape) if mode.offload and not mode.streamed else 0.0
    return (shard.bounds[-1][1] - from_step) * step + decode + moved


def backlog_seconds(pending: Iterable[tuple[Shard, Shape, int]], nodes: Sequence[NodeInfo],
                    speeds: SpeedBook) -> dict[str, float]:
    """Seconds of home work each node has queued: (shard, shape, next step) of unfinished shards."""
    by_name = {n.name: n for n in nodes}
    out = {n.name: 0.0 for n in nodes}
    for shard, shape, step in pending:
        if shard.home in by_name:
            out[shard.home] += shard_seconds(shard, shape, step, by_name[shard.home], speeds)
    return out


def mode_fitting(needs: Sequence[tuple[str, float]], vram_gib: float, peak_factor: float = 1.0) -> str | None:
    """The first (cheapest in time) memory mode of `needs` whose peak fits a budget of `vram_gib`;
    None when it fits in none."""
    budget = costmodel.usable_gib(vram_gib)
    return next((mode for mode, need in needs if need * peak_factor <= budget), None)


def _mode_on(seg: ReadySegment, node: NodeState) -> str | None:
    """The cheapest memory mode in which the segment fits the node's budget ("" for the shard's own
    mode when the segment lists no modes); None when it fits in none."""
    return mode_fitting(seg.needs or (("", seg.need_gib),), node.info.vram_gib, node.peak_factor)


def plan_tick(ready: Sequence[ReadySegment], nodes: Sequence[NodeState],
              missing: Mapping[str, frozenset[str]] | None = None, finish: Finish | None = None) -> list[Assignment]:
    """One decision per idle node; `ready` is in queue order (earlier first).

    Home segments go first, so a node's own next segment is never taken by a neighbour that was
    merely quicker to ask (within the top priority of its own segments, one of a shard it has begun
    first, then one of a model it holds: a model load costs more than the order of two jobs'
    segments on one card). With `finish` (predicted seconds to finish a shard on a node) and no
    begun shard, a shard LONG_FIRST times longer than that choice goes first instead; either way the
    chosen shard may move to an idle node with nothing of its own that
    finishes it MOVE_GAIN sooner, the shards with the most time left at home choosing first. Without
    it a shard stays home and the queue's order holds. Then each
    waiting segment, in queue order, goes to an idle node it fits in some memory mode, one that holds
    its model first, then one whose disk has it (`missing`: the models each node would fetch from the
    head first), then the fastest. So no node idles while a segment that fits it waits. Decode-only
    and encode-only segments are placed that way before any other (see the module docstring).
    """
    lacks = missing or {}
    idle = {n.info.name: n for n in nodes if n.online and not n.busy}
    taken: set[tuple[str, int]] = set()
    out: list[Assignment] = []

    def give(name: str, seg: ReadySegment, mode: str) -> None:
        out.append(Assignment(name, seg.shard_id, seg.index, mode))
        taken.add((seg.shard_id, seg.index))
        del idle[name]

    def anywhere(seg: ReadySegment) -> None:
        """`seg` to an idle node it fits: one that holds its model, then one whose disk has it, then the fastest."""
        modes = {name: m for name, n in idle.items() if (m := _mode_on(seg, n)) is not None}
        if modes:
            best = min((idle[name] for name in modes),
                       key=lambda n: (seg.model not in n.loaded, seg.model in lacks.get(n.info.name, ()),
                                      -n.info.speed, n.info.name))
            give(best.info.name, seg, modes[best.info.name])

    for seg in ready:  # a stage-only segment takes seconds, on one of the few cards it fits
        if seg.stage_only and idle:
            anywhere(seg)
    own: dict[str, list[tuple[ReadySegment, str]]] = {}
    for seg in ready:
        if seg.home not in idle or (seg.shard_id, seg.index) in taken:
            continue
        if (mode := _mode_on(seg, idle[seg.home])) is not None:
            own.setdefault(seg.home, []).append((seg, mode))
    free = [n for n in idle.values() if n.info.name not in own]
    picks = []
    for name, segs in own.items():
        top = [(s, m) for s, m in segs if s.priority == segs[0][0].priority]
        started = [(s, m) for s, m in top if s.index > 0 and not s.stage_only]
        seg, mode = next(((s, m) for s, m in top if s.model in idle[name].loaded), segs[0])
        if started:  # a shard begun here runs to its end: paused, a long video would set the tail
            seg, mode = started[0]
        elif finish is not None:
            longest = max(top, key=lambda sm: (sm[0].model in idle[name].loaded, finish(sm[0], idle[name])))
            if finish(longest[0], idle[name]) >= LONG_FIRST * finish(seg, idle[name]):
                seg, mode = longest
        picks.append((finish(seg, idle[name]) if finish else 0.0, name, seg, mode))
    for stay, name, seg, mode in sorted(picks, key=lambda p: -p[0]):
        if finish is not None:
            moves = [(finish(seg, n), n.info.name, m) for n in free
                     if n.info.name in idle and (m := _mode_on(seg, n)) is not None]
            sooner = min(moves, default=None)
            if sooner is not None and sooner[0] < stay * (1 - MOVE_GAIN):
                _, name, mode = sooner
        give(name, seg, mode)
    for seg in ready:
        if not idle:
            break
        if (seg.shard_id, seg.index) not in taken:
            anywhere(seg)
    return out
