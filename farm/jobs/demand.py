"""What the scheduler plans with for a job: its costed shape (the full-size model and resolution its
VRAM and time are priced at) and the samples to place. Needs the catalog, so it lives here and not in
the pure planner, which sees only shapes and numbers."""

from __future__ import annotations

from collections.abc import Sequence

from farm.contracts.domain import JobSpec, NodeInfo, Shard
from farm.core import planner
from farm.core.costmodel import Shape
from farm.core.planner import Demand, PlanContext
from farm.jobs.catalog import ModelInfo, get_model


def job_shape(job: JobSpec, model: ModelInfo | None = None) -> Shape:
    """The full-size shape a job is costed at (a tiny built-in model stands in for a full-size one),
    with what its first segment runs on an init image (the VAE encode, the family's image encoder)."""
    model = model or get_model(job.model)
    init = bool(job.init_image)
    return Shape(model.profile, *model.costed_size(job.width, job.height), job.frames,
                 init_frames=model.init_frames(job.frames) if init else 0,
                 image_encoder=model.image_encoder if init else "")


def demand_of(job: JobSpec, model: ModelInfo | None = None) -> Demand:
    return Demand(job.model, job_shape(job, model), job.run_steps, tuple(s.index for s in job.samples()), job.priority)


def shard_job(
    job_id: str,
    job: JobSpec,
    model: ModelInfo | None,
    nodes: Sequence[NodeInfo],
    max_segment_steps: int | None = planner.DEFAULT_SEGMENT_STEPS,
    *,
    context: PlanContext = PlanContext(),
) -> list[Shard]:
    """Group the job's samples into shards sized for each node's VRAM and speed.

    `max_segment_steps` caps the steps per segment (None: segments of about
    `context.segment_seconds`). Raises DoesNotFit when no node can hold even one sample.
    """
    return planner.plan_shards(job_id, demand_of(job, model), nodes, max_segment_steps, context)


