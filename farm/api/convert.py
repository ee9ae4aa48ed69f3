"""Proto messages to and from the farm's dataclasses: the only module that knows both.

Messages stay at the edge (servicers, clients); everything behind them sees `JobSpec`, `JobView`,
`NodeView`, `Event`. A message from the wire is untrusted: a job goes through `make_job`, the same
validation as `farm run`, and any other bad field raises `InvalidInput` naming it, which the
servicer answers with INVALID_ARGUMENT before anything is queued.
"""

from __future__ import annotations

import math

from farm.contracts.control import Event, JobView, NodeShare, NodeStatus, NodeView, OwnerPolicy, ShardView
from farm.contracts.domain import JobSpec, JobStatus, Lora, NodeInfo
from farm.contracts.errors import InvalidInput
from farm.contracts.hardware import GpuSample, Hardware, Telemetry
from farm.jobs.jobspec import JobRequest, make_job
from protos.farm.v1 import agent_pb2, control_pb2

MAX_NAME = 128


def _opt(msg: object, field: str) -> object:
    return getattr(msg, field) if msg.HasField(field) else None  # type: ignore[attr-defined]


def spec_to_proto(spec: JobSpec) -> control_pb2.JobSpec:
    msg = control_pb2.JobSpec(
        model=spec.model, prompts=list(spec.prompts), seeds=len(spec.seeds), seed=spec.seeds[0],
        steps=spec.steps, width=spec.width, height=spec.height, guidance=spec.guidance, sampler=spec.sampler,
        negative_prompt=spec.negative_prompt, priority=spec.priority, owner=spec.owner, frames=spec.frames,
        loras=[control_pb2.Lora(name=a.name, weight=a.weight, sha256=a.sha256, short_hash=a.short_hash)
               for a in spec.loras],
    )
    if spec.init_image:  # a text job has no strength: one given would be refused
        msg.strength, msg.init_image = spec.strength, spec.init_image
    return msg


def request_to_proto(request: JobRequest) -> control_pb2.JobSpec:
    """`farm submit`'s job: only the fields its file gives (the head fills in its model's defaults)."""
    msg = control_pb2.JobSpec(model=request.model, prompts=list(request.prompts),
                              negative_prompt=request.negative_prompt, priority=request.priority,
                              loras=[control_pb2.Lora(name=name, weight=weight) for name, weight in request.loras])
    for name in ("seeds", "seed", "steps", "width", "height", "guidance", "sampler", "owner", "frames", "strength"):
        if (value := getattr(request, name)) is not None:
            setattr(msg, name, value)
    return msg


def spec_from_proto(msg: control_pb2.JobSpec, init_image: bytes = b"") -> JobSpec:
    """Validate a submitted job exactly as a job file is validated (raises InvalidInput); `init_image`
    the image file's bytes an img2img job came with (empty: none)."""
    if not msg.model:
        raise InvalidInput("model", "is required")
    if msg.init_image:
        raise InvalidInput("spec.init_image", "is set by the head (the hash of the image sent in init_image)")
    given = {
        name: value
        for name in ("seeds", "seed", "steps", "width", "height", "guidance", "sampler", "owner", "frames", "strength")
        if (value := _opt(msg, name)) is not None
    }
    return make_job(model=msg.model, prompts=list(msg.prompts), negative_prompt=msg.negative_prompt,
                    priority=msg.priority, loras=[{"name": a.name, "weight": a.weight} for a in msg.loras],
                    init_image=init_image or None, **given)


def _spec_as_shown(msg: control_pb2.JobSpec) -> JobSpec:
    """A job the head already accepted, as it reports it (not validated again: the client's model
    catalog may be older than the head's)."""
    return JobSpec(model=msg.model, prompts=tuple(msg.prompts), seeds=tuple(range(msg.seed, msg.seed + msg.seeds)),
                   steps=msg.steps, width=msg.width, height=msg.height, guidance=msg.guidance, sampler=msg.sampler,
                   negative_prompt=msg.negative_prompt, priority=msg.priority, owner=msg.owner, frames=msg.frames,
                   loras=tuple(Lora(a.name, a.weight, a.sha256, a.short_hash) for a in msg.loras),
                   init_image=msg.init_image, strength=msg.strength if msg.HasField("strength") else 1.0)


def _shard_to_proto(s: ShardView) -> control_pb2.ShardView:
    return control_pb2.ShardView(id=s.id, home=s.home, samples=list(s.samples),
                                 bounds=[x for pair in s.bounds for x in pair], step=s.step, node=s.node,
                                 memory_mode=s.memory_mode)


def _shard_from_proto(m: control_pb2.ShardView) -> ShardView:
    flat = list(m.bounds)
    bounds = tuple(zip(flat[::2], flat[1::2], strict=True))
    return ShardView(id=m.id, home=m.home, samples=tuple(m.samples), bounds=bounds, step=m.step, node=m.node,
                     memory_mode=m.memory_mode)


def job_to_proto(view: JobView) -> control_pb2.JobView:
    msg = control_pb2.JobView(
        id=view.id, spec=spec_to_proto(view.spec), status=str(view.status), samples_done=view.samples_done,
        samples_total=view.samples_total, steps_done=view.steps_done, steps_total=view.steps_total,
        submitted_at=view.submitted_at, position=view.position, error=view.error, outputs=list(view.outputs),
        shards=[_shard_to_proto(s) for s in view.shards],
        shares=[control_pb2.NodeShare(node=s.node, samples=s.samples, shards=s.shards, segments=s.segments,
                                      steps=s.steps, seconds=s.seconds) for s in view.shares],
    )
    for name in ("started_at", "finished_at", "eta_s"):
        if (value := getattr(view, name)) is not None:
            setattr(msg, name, value)
    return msg


def job_from_proto(msg: control_pb2.JobView) -> JobView:
    return JobView(
        id=msg.id, spec=_spec_as_shown(msg.spec), status=_enum(JobStatus, "status", msg.status),
        samples_done=msg.samples_done, samples_total=msg.samples_total, steps_done=msg.steps_done,
        steps_total=msg.steps_total, submitted_at=msg.submitted_at, position=msg.position,
        started_at=_opt(msg, "started_at"), finished_at=_opt(msg, "finished_at"),  # type: ignore[arg-type]
        eta_s=_opt(msg, "eta_s"), error=msg.error, outputs=tuple(msg.outputs),  # type: ignore[arg-type]
        shards=tuple(_shard_from_proto(s) for s in msg.shards),
        shares=tuple(NodeShare(node=s.node, samples=s.samples, shards=s.shards, segments=s.segments, steps=s.steps,
                               seconds=s.seconds) for s in msg.shares),
    )


def node_info_to_proto(info: NodeInfo) -> control_pb2.NodeInfo:
    return control_pb2.NodeInfo(name=info.name, vram_gib=info.vram_gib, speed=info.speed, gpu=info.gpu,
                                simulated=info.simulated)


def node_info_from_proto(msg: control_pb2.NodeInfo) -> NodeInfo:
    name = node_name("name", msg.name)
    if not (math.isfinite(msg.vram_gib) and 0 < msg.vram_gib <= 4096):
        raise InvalidInput("vram_gib", f"must be from 0 to 4096 GiB, got {msg.vram_gib}")
    if not (math.isfinite(msg.speed) and 0 < msg.speed <= 1000):
        raise InvalidInput("speed", f"must be above 0 and at most 1000, got {msg.speed}")
    return NodeInfo(name=name, vram_gib=msg.vram_gib, speed=msg.speed, gpu=msg.gpu, simulated=msg.simulated)


def policy_to_proto(policy: OwnerPolicy) -> agent_pb2.OwnerPolicy:
    msg = agent_pb2.OwnerPolicy(active_hours=policy.active_hours, pause_programs=list(policy.pause_programs),
                                pause_on_other_gpu_process=policy.pause_on_other_gpu_process)
    if policy.vram_cap_gib is not None:
        msg.vram_cap_gib = policy.vram_cap_gib
    return msg


def policy_from_proto(msg: agent_pb2.OwnerPolicy) -> OwnerPolicy:
    """An owner's rules from the wire; `active_hours` is checked by `node.policy.parse_hours`."""
    cap = _opt(msg, "vram_cap_gib")
    if cap is not None and not (math.isfinite(cap) and 0 < cap <= 4096):  # type: ignore[operator]
        raise InvalidInput("vram_cap_gib", f"must be from 0 to 4096 GiB, got {cap}")
    programs = tuple(p.strip() for p in msg.pause_programs)
    if any(not p for p in programs):
        raise InvalidInput("pause_programs", "must be non-empty program names")
    return OwnerPolicy(vram_cap_gib=cap, active_hours=msg.active_hours.strip(),  # type: ignore[arg-type]
                       pause_programs=programs, pause_on_other_gpu_process=msg.pause_on_other_gpu_process)


def gpu_to_proto(gpu: GpuSample) -> agent_pb2.Gpu:
    msg = agent_pb2.Gpu(index=gpu.index, name=gpu.name, vram_total_gib=gpu.vram_total_gib,
                        vram_used_gib=gpu.vram_used_gib, vram_free_gib=gpu.vram_free_gib,
                        utilization=gpu.utilization, simulated=gpu.simulated)
    for name in ("temperature_c", "power_w"):
        if (value := getattr(gpu, name)) is not None:
            setattr(msg, name, value)
    return msg


def gpu_from_proto(msg: agent_pb2.Gpu) -> GpuSample:
    return GpuSample(index=msg.index, name=msg.name, vram_total_gib=msg.vram_total_gib,
                     vram_used_gib=msg.vram_used_gib, utilization=msg.utilization,
                     temperature_c=_opt(msg, "temperature_c"), power_w=_opt(msg, "power_w"),  # type: ignore[arg-type]
                     simulated=msg.simulated)


def hardware_to_proto(hw: Hardware) -> agent_pb2.Hardware:
    return agent_pb2.Hardware(hostname=hw.hostname, os=hw.os, cpu_count=hw.cpu_count, ram_total_gib=hw.ram_total_gib,
                              gpus=[gpu_to_proto(g) for g in hw.gpus], simulated=hw.simulated)


def hardware_from_proto(msg: agent_pb2.Hardware) -> Hardware:
    return Hardware(hostname=msg.hostname, os=msg.os, cpu_count=msg.cpu_count, ram_total_gib=msg.ram_total_gib,
                    gpus=tuple(gpu_from_proto(g) for g in msg.gpus))


def telemetry_to_proto(t: Telemetry, state: str, reason: str, worker_running: bool, policy: OwnerPolicy,
                       by_operator: bool, worker_starts: int) -> agent_pb2.Telemetry:
    return agent_pb2.Telemetry(time=t.time, gpus=[gpu_to_proto(g) for g in t.gpus], cpu_percent=t.cpu_percent,
                               ram_used_gib=t.ram_used_gib, ram_total_gib=t.ram_total_gib, state=state,
                               reason=reason, worker_running=worker_running, policy=policy_to_proto(policy),
                               by_operator=by_operator, worker_starts=worker_starts)


def node_to_proto(view: NodeView) -> control_pb2.NodeView:
    msg = control_pb2.NodeView(
        info=node_info_to_proto(view.info), status=str(view.status), segment=view.segment,
        segment_step=view.segment_step, segment_total=view.segment_total, vram_used_gib=view.vram_used_gib,
        utilization=view.utilization, loaded=list(view.loaded), policy=policy_to_proto(view.policy),
        pause_reason=view.pause_reason, stored=list(view.stored), allow_models=list(view.allow_models),
        deny_models=list(view.deny_models),
    )
    for name in ("temperature_c", "power_w"):
        if (value := getattr(view, name)) is not None:
            setattr(msg, name, value)
    return msg


def node_from_proto(msg: control_pb2.NodeView) -> NodeView:
    return NodeView(
        info=node_info_from_proto(msg.info), status=_enum(NodeStatus, "status", msg.status), segment=msg.segment,
        segment_step=msg.segment_step, segment_total=msg.segment_total, vram_used_gib=msg.vram_used_gib,
        utilization=msg.utilization, temperature_c=_opt(msg, "temperature_c"),  # type: ignore[arg-type]
        power_w=_opt(msg, "power_w"), loaded=tuple(msg.loaded), policy=policy_from_proto(msg.policy),  # type: ignore[arg-type]
        pause_reason=msg.pause_reason, stored=tuple(msg.stored), allow_models=tuple(msg.allow_models),
        deny_models=tuple(msg.deny_models),
    )


def event_to_proto(event: Event) -> control_pb2.Event:
    return control_pb2.Event(seq=event.seq, time=event.time, kind=event.kind, job_id=event.job_id,
                             node=event.node, message=event.message)


def event_from_proto(msg: control_pb2.Event) -> Event:
    return Event(seq=msg.seq, time=msg.time, kind=msg.kind, job_id=msg.job_id, node=msg.node, message=msg.message)


def page_token(value: str) -> str:
    """A ListJobs page token from the wire: empty (the first page) or a job id."""
    if len(value) > MAX_NAME:
        raise InvalidInput("page_token", f"must be empty or a job id of 1 to {MAX_NAME} characters")
    return value


def job_id(value: str) -> str:
    """A job id from the wire: present and short (the service says whether it exists)."""
    if not value or len(value) > MAX_NAME:
        raise InvalidInput("job_id", f"must be a job id of 1 to {MAX_NAME} characters")
    return value


def node_name(field: str, value: str) -> str:
    """A node name: ASCII letters, digits, '-' and '_', so it is safe as a Ray resource and a file name."""
    if not value or len(value) > MAX_NAME or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise InvalidInput(field, f"must be 1 to {MAX_NAME} letters, digits, '-' or '_', got {value!r}")
    return value


def _enum(kind: type, field: str, value: str):  # type: ignore[no-untyped-def]
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput(field, f"unknown {field} {value!r}") from None
