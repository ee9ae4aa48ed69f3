"""What the control contract shows of the state (pure): job and node views, and the activity line
each event adds to the log a dashboard follows.

Every figure is derived from the state's own facts (a node's share of a job from the shard runs it
recorded), so nothing here can drift from what `apply` keeps.
"""

from __future__ import annotations

from farm.contracts.control import JobView, NodeShare, NodeView, ShardView
from farm.contracts.domain import JobStatus
from farm.core import events as ev
from farm.core.decide import nodes_in_order, queue_order, shards_in_order
from farm.core.state import FarmState, JobState, NodeRecord


def positions(state: FarmState) -> dict[str, int]:
    """Place in the queue (1 = next) of each job whose work may start."""
    return {job_id: i + 1 for i, job_id in enumerate(queue_order(state))}


def shares(state: FarmState, job: JobState) -> tuple[NodeShare, ...]:
    """What each node did for the job: every node of the farm, then any that has left since."""
    tally: dict[str, list[float]] = {n.info.name: [0, 0, 0, 0, 0.0] for n in nodes_in_order(state)}
    shards_of: dict[str, set[str]] = {}
    for s in shards_in_order(job):
        for r in s.runs:
            t = tally.setdefault(r.node, [0, 0, 0, 0, 0.0])
            t[2] += 1
            t[3] += (r.end - r.start) * s.shard.batch
            t[4] += r.seconds
            shards_of.setdefault(r.node, set()).add(s.shard.id)
        if s.rendered and s.runs:
            tally[s.runs[-1].node][0] += s.shard.batch
    return tuple(NodeShare(name, int(t[0]), len(shards_of.get(name, ())), int(t[2]), int(t[3]), t[4])
                 for name, t in tally.items())


def job_view(state: FarmState, job: JobState, position: int = 0) -> JobView:
    total = job.samples_total * job.spec.run_steps
    done = sum(s.steps_done for s in job.shards.values())
    eta = None
    if job.started_at is not None and done and job.status == JobStatus.RUNNING:
        eta = max(0.0, state.now - job.started_at) / done * (total - done)
    ordered = shards_in_order(job)
    return JobView(
        id=job.id, spec=job.spec, status=job.status, samples_done=len(job.outputs), samples_total=job.samples_total,
        steps_done=done, steps_total=total, submitted_at=job.submitted_at, position=position,
        started_at=job.started_at, finished_at=job.finished_at, eta_s=eta, error=job.error,
        outputs=tuple(job.outputs[i] for i in sorted(job.outputs)),
        shards=tuple(ShardView(s.shard.id, s.shard.home, s.shard.sample_indices, s.shard.bounds,
                               s.shard.bounds[-1][1] if s.rendered else max(s.step, s.progress if s.node else 0),
                               s.node, s.shard.memory_mode) for s in ordered),
        shares=shares(state, job),
    )


def job_views(state: FarmState, after: str = "", limit: int | None = None) -> list[JobView]:
    """Every job in queue order of submission (`seq`: a move changes it); or one page of them: the
    first `limit` jobs whose ids sort after `after`, in id order (ids are time-ordered, so a page does
    not shift when jobs come, move or go while a client pages through)."""
    at = positions(state)
    if not after and limit is None:
        jobs = sorted(state.jobs.values(), key=lambda j: j.seq)
    else:
        ids = sorted(j for j in state.jobs if j > after)
        jobs = [state.jobs[j] for j in (ids if limit is None else ids[:limit])]
    return [job_view(state, j, at.get(j.id, 0)) for j in jobs]


def node_view(state: FarmState, node: NodeRecord) -> NodeView:
    segment, step, total = "", 0, 0
    found = state.shard(node.running) if node.running else None
    if found is not None:
        s = found[1]
        end = s.shard.bounds[s.next_index][1]
        segment, step, total = f"{s.shard.id}#{s.next_index} steps {s.step}-{end}", s.progress, end
    return NodeView(node.info, node.status, segment, step, total, loaded=tuple(sorted(node.loaded)),
                    pause_reason=node.reason, stored=tuple(sorted(node.stored)), allow_models=node.allow_models,
                    deny_models=node.deny_models)


def node_views(state: FarmState) -> list[NodeView]:
    return [node_view(state, n) for n in nodes_in_order(state)]


Line = tuple[str, str, str, str]  # kind, job id, node, message


def activity(before: FarmState, after: FarmState, e: ev.Event) -> list[Line]:
    """The lines an event adds to the activity log; none for events too frequent or too internal to
    show (progress, time, placements)."""
    line = _line(before, after, e)
    lines = [line] if line is not None else []
    if isinstance(e, ev.SegmentStarted):
        job = after.shard(e.shard_id)[0]  # type: ignore[index]
        if before.jobs[job.id].status != job.status:
            lines.insert(0, (f"job_{job.status}", job.id, "", ""))
    return lines


def _line(before: FarmState, after: FarmState, e: ev.Event) -> Line | None:
    match e:
        case ev.JobSubmitted():
            job = after.jobs[e.job_id]
            return "job_submitted", e.job_id, "", f"{job.samples_total} samples, {e.spec.model}"
        case ev.JobCancelled() | ev.JobPaused() | ev.JobResumed() | ev.JobRetried() | ev.JobFailed():
            job = after.jobs[e.job_id]
            kind = {ev.JobResumed: "job_resumed", ev.JobRetried: "job_retried"}.get(type(e), f"job_{job.status}")
            return kind, e.job_id, "", job.error if job.status == JobStatus.FAILED else ""
        case ev.JobForgotten():
            return "job_removed", e.job_id, "", "its outputs stay on the head"
        case ev.JobReprioritised():
            return "job_moved", e.job_id, "", f"priority {e.priority}"
        case ev.JobMoved():
            return "job_moved", e.job_id, "", f"{e.offset:+d} places"
        case ev.NodeJoined():
            return "node_joined", "", e.info.name, f"{e.info.vram_gib:g} GiB, speed {e.info.speed:g}"
        case ev.NodeLeft():
            was = before.nodes.get(e.node)
            if was is not None and was.offline == e.reason:
                return None  # said already: a warning is logged once per change
            return "node_lost", "", e.node, e.reason
        case ev.NodeReady():
            was = before.nodes.get(e.node)
            return "node_ready", "", e.node, "back online" if was is not None and was.offline else "its worker answers"
        case ev.NodePaused():
            return "node_paused", "", e.node, e.pause.text
        case ev.NodeDrained():
            return "node_draining", "", e.node, ""
        case ev.NodeResumed():
            return "node_resumed", "", e.node, ""
        case ev.NodeRemoved():
            return "node_removed", "", e.node, ""
        case ev.ShardMoved():
            found = after.shard(e.shard_id)
            return "shard_moved", found[0].id if found else "", e.node, f"{e.shard_id} {e.reason}"
        case ev.SegmentStarted():
            job_id = after.shard(e.shard_id)[0].id  # type: ignore[index]
            # an encode-only segment (0, 0) or a decode-only one (end, end)
            what = f"steps {e.start}-{e.end}" if e.start < e.end else "encode only" if e.end == 0 else "decode only"
            return "segment_started", job_id, e.node, f"{e.shard_id}#{e.index} {what}"
        case ev.SegmentFinished():
            found = before.shard(e.shard_id)
            job_id = found[0].id if found else ""
            if e.stopped:
                return "segment_paused", job_id, e.node, f"{e.shard_id} checkpointed at step {e.reached}"
            what = " decoded" if e.start == e.reached else ""
            return "segment_finished", job_id, e.node, f"{e.shard_id}#{e.index}{what} in {e.seconds:.1f}s"
        case ev.SegmentFailed():
            found = before.shard(e.shard_id)
            return "segment_failed", found[0].id if found else "", e.node, f"{e.shard_id}: {e.reason}"
        case ev.SegmentLost():
            found = before.shard(e.shard_id)
            return "segment_lost", found[0].id if found else "", e.node, f"{e.shard_id}: {e.reason}"
        case ev.OutputsWritten():
            found = after.shard(e.shard_id)
            was = before.shard(e.shard_id)
            if found is not None and was is not None and found[0].status == JobStatus.DONE != was[0].status:
                return "job_done", found[0].id, "", f"{len(found[0].outputs)} outputs"
            return None
        case ev.OutputsFailed():
            found = after.shard(e.shard_id)
            return "job_failed", found[0].id if found else "", "", e.reason
    return None
