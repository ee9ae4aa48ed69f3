"""`apply(state, event) -> state`: the only place the farm's state changes (pure).

Commands that make no sense now (cancel a finished job, resume a node that is offline) raise
`InvalidInput` naming the field, and leave nothing changed: the runner applies a command before it
logs it, so a refused command is never recorded. Facts from the world never raise: a result for a
shard that moved on, a node that was removed or a job that was cancelled is stale and changes only
what it must (the node is free again). Results are accepted only from the node the segment was
given to, for the segment it was given, so a step never counts twice.
"""

from __future__ import annotations

from dataclasses import replace

from immutables import Map

from farm.contracts.domain import JobStatus, StepRun
from farm.contracts.errors import InvalidInput, NotFound
from farm.core import events as ev
from farm.core.state import PEAKS_KEPT, FarmState, JobState, NodeRecord, ShardState
from farm.core.transitions import ENDED, FINAL, WAITING, transition

PRIORITY_RANGE = (-100, 100)


def apply(state: FarmState, event: ev.Event) -> FarmState:
    """The state after `event` (see the module docstring for what raises)."""
    handler = _HANDLERS[type(event)]
    out = handler(state, event)
    return out if out.now >= event.at else replace(out, now=event.at)


# ----- helpers ----------------------------------------------------------------------------------


def _job(state: FarmState, job_id: str) -> JobState:
    job = state.jobs.get(job_id)
    if job is None:
        raise NotFound("job", f"no job {job_id!r}")
    return job


def _node(state: FarmState, name: str) -> NodeRecord:
    node = state.nodes.get(name)
    if node is None:
        raise NotFound("node", f"no node {name!r}; nodes: {', '.join(sorted(state.nodes)) or 'none'}")
    return node


def _put_job(state: FarmState, job: JobState) -> FarmState:
    return replace(state, jobs=state.jobs.set(job.id, job))


def _put_shard(state: FarmState, job: JobState, shard: ShardState) -> FarmState:
    return _put_job(state, replace(job, shards=job.shards.set(shard.shard.id, shard)))


def _put_node(state: FarmState, node: NodeRecord) -> FarmState:
    return replace(state, nodes=state.nodes.set(node.info.name, node))


def _status(job: JobState, new: JobStatus, at: float, error: str | None = None) -> JobState:
    status = transition(job.id, job.status, new)
    ended = status in FINAL or status == JobStatus.FAILED
    return replace(job, status=status, finished_at=at if ended else None,
                   error=job.error if error is None else error)


def _release(state: FarmState, name: str, shard_id: str) -> FarmState:
    """The node no longer runs `shard_id` (its result came back, failed or was lost)."""
    node = state.nodes.get(name)
    if node is None or node.running != shard_id:
        return state
    return _put_node(state, replace(node, running="", interrupting=False))


def _requeue(state: FarmState, shard_id: str) -> FarmState:
    """The shard's segment runs nowhere now: it waits for a node, from its last checkpoint."""
    found = state.shard(shard_id)
    if found is None:
        return state
    job, shard = found
    return _put_shard(state, job, replace(shard, node="", progress=shard.step))


def _drop_running(state: FarmState, node: NodeRecord) -> FarmState:
    """A node's worker is gone (left, rejoined, removed): its segment goes back to the queue."""
    if node.running:
        state = _requeue(state, node.running)
    return state


def _has_home_work(state: FarmState, node: str) -> bool:
    return any(s.shard.home == node and not s.rendered for j in state.jobs.values() if j.status in WAITING
               for s in j.shards.values())


# ----- jobs -------------------------------------------------------------------------------------


def _submitted(state: FarmState, e: ev.JobSubmitted) -> FarmState:
    if e.job_id in state.jobs:
        raise InvalidInput("job", f"a job {e.job_id!r} exists already")
    samples = tuple(range(len(e.spec.prompts) * len(e.spec.seeds)))
    job = JobState(e.job_id, e.spec, e.shape, state.seq + 1, e.at, unplanned=samples)
    return replace(_put_job(state, job), seq=job.seq, replan=True)


def _cancelled(state: FarmState, e: ev.JobCancelled) -> FarmState:
    return _put_job(state, _status(_job(state, e.job_id), JobStatus.CANCELLED, e.at))


def _forgotten(state: FarmState, e: ev.JobForgotten) -> FarmState:
    job = _job(state, e.job_id)
    if job.status not in ENDED:
        raise InvalidInput("job", f"{e.job_id} is {job.status}: only a done, failed or cancelled job can be removed "
                           "(cancel it first)")
    return replace(state, jobs=state.jobs.delete(e.job_id))


def _paused(state: FarmState, e: ev.JobPaused) -> FarmState:
    return _put_job(state, _status(_job(state, e.job_id), JobStatus.PAUSED, e.at))


def _resumed(state: FarmState, e: ev.JobResumed) -> FarmState:
    job = _job(state, e.job_id)
    if job.status != JobStatus.PAUSED:
        raise InvalidInput("job", f"{e.job_id} is {job.status}, not paused")
    job = _status(job, JobStatus.RUNNING if job.started_at else JobStatus.QUEUED, e.at)
    return replace(_put_job(state, job), replan=True)


def _retried(state: FarmState, e: ev.JobRetried) -> FarmState:
    job = _job(state, e.job_id)
    if job.status != JobStatus.FAILED:
        raise InvalidInput("job", f"{e.job_id} is {job.status}; only a failed job can be retried")
    job = _status(job, JobStatus.RUNNING if job.started_at else JobStatus.QUEUED, e.at, error="")
    return replace(_put_job(state, replace(job, failures=0, node_failures=Map())), replan=True)


def _reprioritised(state: FarmState, e: ev.JobReprioritised) -> FarmState:
    lo, hi = PRIORITY_RANGE
    if isinstance(e.priority, bool) or not isinstance(e.priority, int) or not lo <= e.priority <= hi:
        raise InvalidInput("priority", f"must be a whole number from {lo} to {hi}, got {e.priority!r}")
    job = _job(state, e.job_id)
    return replace(_put_job(state, replace(job, spec=replace(job.spec, priority=e.priority))), replan=True)


def _moved(state: FarmState, e: ev.JobMoved) -> FarmState:
    """Swap queue positions (`seq`) among the waiting and paused jobs of the job's priority."""
    job = _job(state, e.job_id)
    movable = WAITING | {JobStatus.PAUSED}
    peers = sorted((j for j in state.jobs.values() if j.status in movable and j.spec.priority == job.spec.priority),
                   key=lambda j: j.seq)
    if job.status not in movable:
        raise InvalidInput("job", f"{e.job_id} is {job.status}; only waiting jobs move")
    at = peers.index(job)
    to = min(max(at + e.offset, 0), len(peers) - 1)
    seqs = [j.seq for j in peers]
    peers.insert(to, peers.pop(at))
    for peer, seq in zip(peers, seqs, strict=True):
        if peer.seq != seq:
            state = _put_job(state, replace(peer, seq=seq))
    return state


def _failed(state: FarmState, e: ev.JobFailed) -> FarmState:
    return _put_job(state, _status(_job(state, e.job_id), JobStatus.FAILED, e.at, error=e.reason))


def _planned(state: FarmState, e: ev.ShardsPlanned) -> FarmState:
    for job_id, dropped, shards in e.plans:
        job = state.jobs[job_id]
        kept = job.shards
        for shard_id in dropped:
            if shard_id in kept and kept[shard_id].unstarted:
                kept = kept.delete(shard_id)
        for s in shards:
            kept = kept.set(s.id, ShardState(s))
        placed = {i for s in shards for i in s.sample_indices}
        state = _put_job(state, replace(job, shards=kept, next_shard=job.next_shard + len(shards),
                                        unplanned=tuple(i for i in job.unplanned if i not in placed)))
    return replace(state, replan=False)


def _moved_shard(state: FarmState, e: ev.ShardMoved) -> FarmState:
    """A shard waiting at a segment boundary gets a new home (stale when it runs or is done)."""
    found = state.shard(e.shard_id)
    if found is None or found[1].node or found[1].rendered or e.node not in state.nodes:
        return state
    job, shard = found
    return _put_shard(state, job, replace(shard, shard=replace(shard.shard, home=e.node)))


# ----- nodes ------------------------------------------------------------------------------------


def _joined(state: FarmState, e: ev.NodeJoined) -> FarmState:
    old = state.nodes.get(e.info.name)
    if old is None:
        node = NodeRecord(e.info, order=max((n.order for n in state.nodes.values()), default=0) + 1)
    else:  # a fresh worker: whatever the old one ran or held is gone; an operator's pause or drain stays
        state = _drop_running(state, old)
        node = replace(old, info=e.info, running="", offline="", loaded=frozenset(), interrupting=False, ready=False,
                       probed_at=None, probing=False)
    return replace(_put_node(state, node), replan=True)


def _left(state: FarmState, e: ev.NodeLeft) -> FarmState:
    node = state.nodes.get(e.node)
    if node is None:
        return state
    state = _drop_running(state, node)
    return _put_node(state, replace(node, running="", offline=e.reason or "unreachable", loaded=frozenset(),
                                    interrupting=False, ready=False, probing=False))


def _node_paused(state: FarmState, e: ev.NodePaused) -> FarmState:
    return _put_node(state, replace(_node(state, e.node), pause=e.pause))


def _drained(state: FarmState, e: ev.NodeDrained) -> FarmState:
    return _put_node(state, replace(_node(state, e.node), draining=True))


def _node_resumed(state: FarmState, e: ev.NodeResumed) -> FarmState:
    node = _node(state, e.node)
    if node.offline:
        raise InvalidInput("node", f"{e.node} is offline ({node.offline})")
    return replace(_put_node(state, replace(node, pause=None, draining=False)), replan=True)


def _removed(state: FarmState, e: ev.NodeRemoved) -> FarmState:
    node = _node(state, e.node)
    state = _drop_running(state, node)
    return replace(state, nodes=state.nodes.delete(e.node), replan=True)


def _probed(state: FarmState, e: ev.NodeProbed) -> FarmState:
    node = state.nodes.get(e.node)
    return state if node is None else _put_node(state, replace(node, probed_at=e.at, probing=True))


def _ready(state: FarmState, e: ev.NodeReady) -> FarmState:
    node = state.nodes.get(e.node)
    if node is None:
        return state
    state = replace(_put_node(state, replace(node, ready=True, offline="", probing=False)),
                    replan=state.replan or not node.ready)
    return replace(state, speeds=state.speeds.calibrate(e.node, e.calibration)) if e.calibration else state


def _node_models(state: FarmState, e: ev.NodeModels) -> FarmState:
    """A node's disk and lists changed: unstarted work is placed again (a list may now refuse a job)."""
    node = state.nodes.get(e.node)
    if node is None:
        return state
    return replace(_put_node(state, replace(node, stored=e.stored, allow_models=e.allow, deny_models=e.deny,
                                            link_bytes_per_s=e.link_bytes_per_s)), replan=True)


def _model_served(state: FarmState, e: ev.ModelServed) -> FarmState:
    state = replace(state, synced=state.synced.set(e.model, e.size))
    for name in e.holders:
        node = state.nodes.get(name)
        if node is not None:
            state = _put_node(state, replace(node, stored=node.stored | {e.model}))
    return state


def _interrupted(state: FarmState, e: ev.NodeInterrupted) -> FarmState:
    node = state.nodes.get(e.node)
    return state if node is None else _put_node(state, replace(node, interrupting=True))


# ----- segments ---------------------------------------------------------------------------------


def _started(state: FarmState, e: ev.SegmentStarted) -> FarmState:
    job, shard = _shard(state, e.shard_id)
    node = _node(state, e.node)
    if shard.node or node.running or shard.next_index != e.index or shard.step != e.start:
        raise InvalidInput("segment", f"{e.shard_id}#{e.index} cannot start on {e.node} now")
    if job.status == JobStatus.QUEUED:
        job = replace(_status(job, JobStatus.RUNNING, e.at), started_at=job.started_at or e.at)
    state = _put_shard(state, job, replace(shard, node=e.node, progress=e.start, heard_at=e.at))
    return _put_node(state, replace(node, running=e.shard_id))


def _shard(state: FarmState, shard_id: str) -> tuple[JobState, ShardState]:
    found = state.shard(shard_id)
    if found is None:
        raise NotFound("shard", f"no shard {shard_id!r}")
    return found


def _progressed(state: FarmState, e: ev.SegmentProgressed) -> FarmState:
    found = state.shard(e.shard_id)
    if found is None or found[1].node != e.node:
        return state
    job, shard = found
    return _put_shard(state, job, replace(shard, progress=max(shard.progress, e.step), heard_at=e.at))


def _finished(state: FarmState, e: ev.SegmentFinished) -> FarmState:
    state = _release(state, e.node, e.shard_id)
    node = state.nodes.get(e.node)
    found = state.shard(e.shard_id)
    if node is not None:
        predicted = 0.0
        if found is not None:
            shard = found[1].shard
            needs = dict(shard.decode_needs if shard.decode_only(e.index)
                         else shard.encode_needs if shard.encode_only(e.index) else shard.needs)
            predicted = needs.get(e.memory_mode, shard.need_gib)
        peaks = node.peaks
        if e.peak_gib > 0 and predicted > 0:
            peaks = (peaks + ((predicted, e.peak_gib),))[-PEAKS_KEPT:]
        state = _put_node(state, replace(node, loaded=frozenset(e.loaded), peaks=peaks))
    if found is None:
        return state
    job, shard = found
    if shard.node != e.node or shard.next_index != e.index or shard.step != e.start:
        return state  # stale: the segment was given back (pause, loss) and runs or ran elsewhere
    bounds = shard.shard.bounds[e.index]
    if not bounds[0] <= e.start <= e.reached <= bounds[1] or (not e.stopped and e.reached != bounds[1]):
        return _put_shard(state, job, replace(shard, node="", progress=shard.step))
    shard = replace(shard, node="", progress=e.reached)
    if job.status in FINAL:
        return _put_shard(state, job, shard)  # cancelled while it ran: the result is not wanted
    stages = _stages(shard.checkpoint is None, e)
    if stages:
        run = StepRun(e.node, e.gpu, e.start, e.reached, e.memory_mode, e.seconds, e.precision, stages)
        shard = replace(shard, runs=shard.runs + (run,))
    if e.reached > e.start:
        state = replace(state, speeds=state.speeds.observe(e.node, job.shape, shard.shard.batch, e.reached - e.start,
                                                           e.denoise_seconds or e.seconds))
    owner = job.spec.owner
    state = replace(state, usage=state.usage.set(owner, state.usage.get(owner, 0.0) + max(0.0, e.seconds)))
    if e.stopped:
        shard = replace(shard, step=e.reached, checkpoint=e.checkpoint)
    else:
        shard = replace(shard, next_index=e.index + 1, step=e.reached, checkpoint=e.checkpoint,
                        result=e.result if e.index + 1 >= len(shard.shard.bounds) else None)
    state = _put_shard(state, state.jobs[job.id], shard)
    if shard.rendered and not _has_home_work(state, shard.shard.home):
        state = replace(state, replan=True)  # its node ran out of its own work: the last plan's speeds were off
    return state


def _stages(encoded: bool, e: ev.SegmentFinished) -> str:
    """What of the pipeline a finished segment ran (its provenance): it encoded when it began without
    a checkpoint, denoised when it ran steps, decoded when it returned images."""
    ran = (("encode", encoded), ("denoise", e.reached > e.start), ("decode", e.result is not None and not e.stopped))
    return "+".join(name for name, did in ran if did)


def _segment_failed(state: FarmState, e: ev.SegmentFailed) -> FarmState:
    state = _release(state, e.node, e.shard_id)
    found = state.shard(e.shard_id)
    if found is None or found[1].node != e.node:
        return state
    job, shard = found
    state = _put_shard(state, job, replace(shard, node="", progress=shard.step))
    if not e.charged:
        return state
    job = state.jobs[job.id]
    job = replace(job, failures=job.failures + 1,
                  node_failures=job.node_failures.set(e.node, job.node_failures.get(e.node, 0) + 1))
    if job.status in WAITING | {JobStatus.PAUSED} and job.failures >= state.settings.max_failures:
        reason = f"{job.failures} failed segments, last on {e.node}: {e.reason}"
        job = _status(job, JobStatus.FAILED, e.at, error=reason)
    return _put_job(state, job)


def _lost(state: FarmState, e: ev.SegmentLost) -> FarmState:
    state = _release(state, e.node, e.shard_id)
    found = state.shard(e.shard_id)
    if found is None or found[1].node != e.node:
        return state
    return _requeue(state, e.shard_id)


def _written(state: FarmState, e: ev.OutputsWritten) -> FarmState:
    job, shard = _shard(state, e.shard_id)
    outputs = job.outputs
    for index, path in e.paths:
        outputs = outputs.set(index, path)
    job = replace(job, outputs=outputs, shards=job.shards.set(e.shard_id, replace(shard, written=True, result=None)))
    if job.status in WAITING and not job.unplanned and all(s.written for s in job.shards.values()):
        job = _status(job, JobStatus.DONE, e.at)
    return _put_job(state, job)


def _outputs_failed(state: FarmState, e: ev.OutputsFailed) -> FarmState:
    job, _ = _shard(state, e.shard_id)
    if job.status in FINAL or job.status == JobStatus.FAILED:
        return state
    return _put_job(state, _status(job, JobStatus.FAILED, e.at, error=f"writing outputs failed: {e.reason}"))


def _time(state: FarmState, e: ev.TimePassed) -> FarmState:
    return state


_HANDLERS = {
    ev.JobSubmitted: _submitted, ev.JobCancelled: _cancelled, ev.JobForgotten: _forgotten,
    ev.JobPaused: _paused, ev.JobResumed: _resumed,
    ev.JobRetried: _retried, ev.JobReprioritised: _reprioritised, ev.JobMoved: _moved, ev.JobFailed: _failed,
    ev.ShardsPlanned: _planned, ev.ShardMoved: _moved_shard, ev.NodeJoined: _joined, ev.NodeLeft: _left,
    ev.NodePaused: _node_paused,
    ev.NodeDrained: _drained, ev.NodeResumed: _node_resumed, ev.NodeRemoved: _removed,
    ev.NodeInterrupted: _interrupted, ev.NodeModels: _node_models,
    ev.ModelServed: _model_served, ev.NodeProbed: _probed, ev.NodeReady: _ready,
    ev.SegmentStarted: _started, ev.SegmentProgressed: _progressed,
    ev.SegmentFinished: _finished, ev.SegmentFailed: _segment_failed, ev.SegmentLost: _lost,
    ev.OutputsWritten: _written,
    ev.OutputsFailed: _outputs_failed, ev.TimePassed: _time,
}
assert set(_HANDLERS) == set(ev.EVENT_TYPES), "every event type has exactly one handler"
