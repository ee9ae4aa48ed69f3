"""`decide(state, now) -> actions`: what the farm should do next (pure).

One pass, in this order:

1. place unstarted work again when the state asks for it (`replan`: a job arrived, a node joined
   or ran out of its own work): `planner.plan_queue` over every waiting job's unstarted samples,
   recorded as a `ShardsPlanned` event so a restart replays the placement, not the planner;
2. interrupt nodes whose segment is no longer wanted where it runs (the node was paused, the job
   cancelled): they checkpoint at the next step boundary and hand the rest back;
3. write the samples of rendered shards (each once);
4. give every idle node one ready segment (`planner.plan_tick`), in queue order; a shard that moves
   to another node at a segment boundary (predicted to finish sooner there) is recorded as a
   `ShardMoved` event first, with both predictions, so the job's activity shows why.

The same functions, with another placement, make the baselines of `farm.core.baselines`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from farm.contracts.domain import JobStatus, NodeState, ReadySegment
from farm.core import costmodel, model_lists, order, planner
from farm.core.actions import Action, InterruptNode, ProbeNode, Record, StartSegment, WriteOutputs
from farm.core.apply import apply
from farm.core.events import NodeLeft, SegmentLost, ShardMoved, ShardsPlanned
from farm.core.speed import checkpoint_bytes, last_segment_modes, load_seconds, reference_decode_seconds
from farm.core.state import FarmState, JobState, NodeRecord, ShardState
from farm.core.transitions import FINAL, WAITING

Decide = Callable[[FarmState, float], list[Action]]
# A segment whose node said nothing of it for LEASE_FACTOR times its expected time (and at least
# LEASE_MIN_S: a cold model load) is lost: it resumes elsewhere from its checkpoint.
LEASE_FACTOR = 4.0
LEASE_MIN_S = 120.0
# A probe unanswered this long makes the node offline (a worker that just joined gets longer: its
# process imports torch and diffusers first); an offline node is probed again this often.
PROBE_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 180.0
PROBE_EVERY_S = 10.0


def decide(state: FarmState, now: float) -> list[Action]:
    """The farm's own decisions (see the module docstring)."""
    actions: list[Action] = []
    for event in liveness(state, now):
        actions.append(Record(event))
        state = apply(state, event)
    if state.replan:
        planned = plan(state, now)
        actions.append(Record(planned))
        state = apply(state, planned)
    return actions + probes(state, now) + interrupts(state) + writes(state) + dispatch(state, now)


# ----- reading the state in a stable order ------------------------------------------------------


def shards_in_order(job: JobState) -> list[ShardState]:
    """A job's shards in creation order (ids end in their number)."""
    return sorted(job.shards.values(), key=lambda s: int(s.shard.id.rsplit("/s", 1)[1]))


def nodes_in_order(state: FarmState) -> list[NodeRecord]:
    return sorted(state.nodes.values(), key=lambda n: (n.order, n.info.name))


def remaining_seconds(state: FarmState, job: JobState) -> float:
    """GPU-seconds the job's unrendered shards still need on their home nodes (fair share charges
    it to the owner for the jobs queued after this one)."""
    total = 0.0
    for s in job.shards.values():
        home = state.nodes.get(s.shard.home)
        if home is not None and not s.rendered:
            total += planner.shard_seconds(s.shard, job.shape, s.step, home.info, state.speeds)
    return total


def queue_order(state: FarmState) -> list[str]:
    """Ids of the jobs whose work may start, in queue order: priority, fair share, first in first out."""
    waiting = [j for j in state.jobs.values() if j.status in WAITING]
    return order.order_jobs(
        [order.QueuedJob(j.id, j.spec.owner, j.spec.priority, j.seq, remaining_seconds(state, j)) for j in waiting],
        dict(state.usage))


def context(state: FarmState, skip: Iterable[str] = ()) -> planner.PlanContext:
    """What the planner knows: learned speeds, loaded models, corrections, and each node's queued
    home work (leaving out the shards in `skip`, which are being placed again)."""
    skipped = set(skip)
    started = [(s.shard, j.shape, s.step) for j in state.jobs.values() if j.status in WAITING
               for s in j.shards.values() if not s.rendered and s.shard.id not in skipped]
    infos = [n.info for n in state.nodes.values() if not n.offline]
    return planner.PlanContext(
        speeds=state.speeds,
        segment_seconds=state.settings.segment_seconds,
        backlog=planner.backlog_seconds(started, infos, state.speeds),
        loaded={n.info.name: n.loaded for n in state.nodes.values()},
        peak_factors={n.info.name: n.peak_factor for n in state.nodes.values()},
        synced=dict(state.synced),
        stored={n.info.name: n.stored for n in state.nodes.values()},
        links={n.info.name: n.link_bytes_per_s for n in state.nodes.values()},
        lists={n.info.name: (n.allow_models, n.deny_models) for n in state.nodes.values()},
        place_stages=state.settings.place_stages,
    )


# ----- 0. liveness -------------------------------------------------------------------------------


def lease_seconds(state: FarmState, node: NodeRecord, shard: ShardState, shape: costmodel.Shape) -> float:
    """How long a node may stay silent about a segment before it counts as lost."""
    end = shard.shard.bounds[shard.next_index][1]
    expected = state.speeds.step_seconds(node.info, shape, shard.shard.batch) * (end - shard.step)
    expected += load_seconds(shape)
    if end == shard.shard.bounds[-1][1]:
        expected += reference_decode_seconds(shape, shard.shard.batch, tiled=True) * state.speeds.factor(
            node.info, shape.family)
    return max(LEASE_MIN_S, LEASE_FACTOR * expected)


def liveness(state: FarmState, now: float) -> list[NodeLeft | SegmentLost]:
    """Segments whose lease ran out, and nodes whose worker did not answer a probe in time."""
    out: list[NodeLeft | SegmentLost] = []
    for node in nodes_in_order(state):
        name = node.info.name
        timeout = PROBE_TIMEOUT_S if node.offline else STARTUP_TIMEOUT_S
        if node.probing and node.probed_at is not None and now - node.probed_at > timeout:
            # An offline node keeps the reason it went offline for (its agent may have said which port
            # is blocked): the unanswered probe only confirms it.
            why = node.offline or f"Ray worker unreachable: no answer to a health probe in {timeout:.0f} s"
            out.append(NodeLeft(now, name, why))
            continue
        found = state.shard(node.running) if node.running else None
        if found is None:
            continue
        job, shard = found
        silent = now - shard.heard_at
        if silent > lease_seconds(state, node, shard, job.shape):
            why = f"no word of {shard.shard.id} for {silent:.0f} s"
            out += [SegmentLost(now, shard.shard.id, name, why), NodeLeft(now, name, f"Ray worker unreachable: {why}")]
    return out


def probes(state: FarmState, now: float) -> list[Action]:
    """Probe every node that has not answered since it joined, and each offline one now and then."""
    out: list[Action] = []
    for node in nodes_in_order(state):
        if node.ready or node.probing:
            continue
        if not node.offline or node.probed_at is None or now - node.probed_at >= PROBE_EVERY_S:
            out.append(ProbeNode(node.info.name))
    return out


def next_check(state: FarmState) -> float | None:
    """The earliest time at which the clock alone can make `decide` act (a probe or a lease running
    out, an offline node due for another probe); None when only an event can. A runner sleeps until
    then instead of asking `decide` every second."""
    due: list[float] = []
    for node in state.nodes.values():
        if node.probing and node.probed_at is not None:
            due.append(node.probed_at + (PROBE_TIMEOUT_S if node.offline else STARTUP_TIMEOUT_S))
        elif node.offline and not node.ready and node.probed_at is not None:
            due.append(node.probed_at + PROBE_EVERY_S)
        found = state.shard(node.running) if node.running else None
        if found is not None:
            job, shard = found
            due.append(shard.heard_at + lease_seconds(state, node, shard, job.shape))
    return min(due, default=None)


# ----- 1. placement -----------------------------------------------------------------------------


def fits_somewhere(state: FarmState, job: JobState, nodes: Iterable[NodeRecord]) -> bool:
    """Some node whose owner's model lists allow the job's model holds a sample in VRAM, or (with
    stage placement) each of its stages (encode, denoise, decode) fits some such node."""
    allowed = [n for n in nodes if model_lists.allows_job(job.spec.model, job.adapters, n.allow_models, n.deny_models)]
    if any(costmodel.best_fit(job.shape, n.info.vram_gib, 1, n.peak_factor) for n in allowed):
        return True
    return state.settings.place_stages and all(
        any(costmodel.best_fit(job.shape, n.info.vram_gib, 1, n.peak_factor, roles) for n in allowed)
        for roles in costmodel.STAGES)


def plan(state: FarmState, now: float) -> ShardsPlanned:
    """Every waiting job's unstarted samples placed at once on the nodes that take work or will as
    soon as their worker answers (a job no such node holds keeps what it has until one joins)."""
    nodes = [n for n in nodes_in_order(state) if not n.offline and n.pause is None and not n.draining]
    demands, dropped = [], {}
    for job_id in queue_order(state):
        job = state.jobs[job_id]
        unstarted = [s for s in shards_in_order(job) if s.unstarted]
        samples = tuple(sorted(job.unplanned + tuple(i for s in unstarted for i in s.shard.sample_indices)))
        if not samples or not fits_somewhere(state, job, nodes):
            continue
        demands.append((job_id, planner.Demand(job.spec.model, job.shape, job.spec.run_steps, samples,
                                               job.spec.priority, job.next_shard, job.adapters)))
        dropped[job_id] = tuple(s.shard.id for s in unstarted)
    if not demands:
        return ShardsPlanned(now, ())
    plans = planner.plan_queue(demands, [n.info for n in nodes], state.settings.max_segment_steps,
                               context(state, skip=[i for ids in dropped.values() for i in ids]))
    return ShardsPlanned(now, tuple((job_id, dropped[job_id], tuple(plans[job_id])) for job_id, _ in demands))


# ----- 2 and 3. interrupts and outputs ----------------------------------------------------------


def interrupts(state: FarmState) -> list[Action]:
    out: list[Action] = []
    for node in nodes_in_order(state):
        if not node.running or node.interrupting:
            continue
        found = state.shard(node.running)
        unwanted = found is None or found[0].status in FINAL
        if node.pause is not None or unwanted:
            out.append(InterruptNode(node.info.name))
    return out


def writes(state: FarmState) -> list[Action]:
    return [WriteOutputs(s.shard.id, s.result) for j in sorted(state.jobs.values(), key=lambda j: j.seq)
            if j.status in WAITING | {JobStatus.PAUSED} for s in shards_in_order(j)
            if s.result is not None and not s.written]


# ----- 4. dispatch ------------------------------------------------------------------------------


def ready_segments(state: FarmState, job_ids: Iterable[str]) -> list[ReadySegment]:
    """Segments whose previous segment is done and that run nowhere, in the order of `job_ids`. A
    shard's last segment lists its memory modes in the order of its time with the decode counted."""
    out = []
    for job_id in job_ids:
        job = state.jobs[job_id]
        for s in shards_in_order(job):
            if not s.rendered and not s.node:
                needs = s.shard.needs
                if s.shard.decode_only(s.next_index):  # no steps: priced by the decode alone
                    needs = last_segment_modes(job.shape, s.shard.batch, 0, s.shard.decode_needs)
                elif s.shard.encode_only(s.next_index):  # no steps: priced by the encode alone
                    needs = s.shard.encode_needs
                elif s.next_index == len(s.shard.bounds) - 1:
                    needs = last_segment_modes(job.shape, s.shard.batch, s.shard.bounds[-1][1] - s.step, needs)
                out.append(ReadySegment(s.shard.id, s.next_index, s.shard.home, s.shard.need_gib, job_id,
                                        job.spec.model, job.spec.priority, needs, s.shard.decode_only(s.next_index),
                                        s.shard.encode_only(s.next_index)))
    return out


def start(state: FarmState, node: str, shard_id: str, mode: str) -> StartSegment:
    found = state.shard(shard_id)
    assert found is not None
    s = found[1]
    return StartSegment(node, shard_id, s.next_index, s.step, s.shard.bounds[s.next_index][1],
                        mode or s.shard.memory_mode, s.checkpoint)


def node_table(state: FarmState, busy: Iterable[str] = ()) -> list[NodeState]:
    taken = set(busy)
    return [NodeState(n.info, busy=bool(n.running) or n.info.name in taken, online=n.takes_work, loaded=n.loaded,
                      peak_factor=n.peak_factor) for n in nodes_in_order(state)]


def finish_seconds(state: FarmState, seg: ReadySegment, node: NodeState) -> float:
    """Predicted seconds until the segment's shard is done on `node` if it starts there now: its
    remaining steps and decode at the node's learned speed, the model load (and fetch from the head)
    where the node lacks the model, and the checkpoint's trip over the node's link when another node
    ran the shard last."""
    found = state.shard(seg.shard_id)
    record = state.nodes.get(node.info.name)
    if found is None or record is None:
        return float("inf")
    job, s = found
    seconds = planner.shard_seconds(s.shard, job.shape, s.step, node.info, state.speeds)
    if job.spec.model not in node.loaded:
        seconds += load_seconds(job.shape)
        if job.spec.model in state.synced and job.spec.model not in record.stored:
            seconds += model_lists.transfer_seconds(state.synced[job.spec.model], record.link_bytes_per_s)
    if s.checkpoint is not None and (not s.runs or s.runs[-1].node != node.info.name):
        seconds += model_lists.transfer_seconds(checkpoint_bytes(job.shape, s.shard.batch), record.link_bytes_per_s)
    return seconds


def home_wait_seconds(state: FarmState, home: str) -> float:
    """Predicted seconds until `home` is done with the segment it runs now (0 when idle)."""
    node = state.nodes.get(home)
    found = state.shard(node.running) if node is not None and node.running else None
    if node is None or found is None:
        return 0.0
    job, s = found
    end = s.shard.bounds[s.next_index][1]
    left = state.speeds.step_seconds(node.info, job.shape, s.shard.batch) * max(0, end - max(s.step, s.progress))
    if end == s.shard.bounds[-1][1]:
        left += reference_decode_seconds(job.shape, s.shard.batch, True) * state.speeds.factor(node.info,
                                                                                             job.shape.family)
    return left


def moved(state: FarmState, seg: ReadySegment, node: NodeState, now: float) -> ShardMoved:
    """The record of a shard leaving its home for `node`, with both predictions."""
    there = finish_seconds(state, seg, node)
    home = state.nodes.get(seg.home)
    if home is None or home.offline:
        why = f"its home {seg.home} is gone"
    else:
        table = NodeState(home.info, busy=bool(home.running), online=home.takes_work, loaded=home.loaded,
                          peak_factor=home.peak_factor)
        stay = home_wait_seconds(state, seg.home) + finish_seconds(state, seg, table)
        why = f"predicted finish {there:.0f} s vs {stay:.0f} s on {seg.home}"
    return ShardMoved(now, seg.shard_id, node.info.name, f"moved to {node.info.name}: {why}")


def dispatch(state: FarmState, now: float) -> list[Action]:
    """One ready segment per idle node, in queue order. A job that blocklisted some nodes (too many
    failures there) is placed with those nodes looking busy; groups go in the queue order of their
    first segment. A node whose owner's model lists refuse a segment's model looks busy to it too.
    A segment that runs away from its home moves its shard there (`ShardMoved`, recorded first)."""
    ready = ready_segments(state, queue_order(state))
    groups: dict[frozenset[str], list[ReadySegment]] = {}
    for seg in ready:
        refusing = frozenset(n.info.name for n in state.nodes.values() if (n.allow_models or n.deny_models)
                             and not model_lists.allows_job(seg.model, state.jobs[seg.job_id].adapters,
                                                                  n.allow_models, n.deny_models))
        groups.setdefault(state.jobs[seg.job_id].blocked(state.settings.blocklist_after) | refusing, []).append(seg)
    missing = {n.info.name: frozenset(m for m in state.synced if m not in n.stored) for n in state.nodes.values()}
    taken: set[str] = set()
    out: list[Action] = []

    def finish(seg: ReadySegment, node: NodeState) -> float:
        return finish_seconds(state, seg, node)

    for blocked, segs in groups.items():
        table = node_table(state, taken | blocked)
        by_seg = {(s.shard_id, s.index): s for s in segs}
        by_node = {n.info.name: n for n in table}
        for a in planner.plan_tick(segs, table, missing, finish):
            seg = by_seg[(a.shard_id, a.index)]
            if a.node != seg.home and not seg.stage_only:
                out.append(Record(moved(state, seg, by_node[a.node], now)))
            out.append(start(state, a.node, a.shard_id, a.memory_mode))
            taken.add(a.node)
    return out
