"""The farm's vocabulary as frozen dataclasses (pure core: no heavy imports).

Words follow ARCHITECTURE.md: a job has samples; samples are batched into shards sized for a node;
a shard runs as segments (step ranges) handed between nodes as checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for its first segment
    RUNNING = "running"  # at least one segment started
    PAUSED = "paused"  # by an operator: running segments finish, no new ones start
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Sample:
    """One (prompt, seed) pair of a job: one image."""

    index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter a job applies at `weight`, pinned to the bytes of its file (`farm.jobs.loras`):
    every node loads the same file, and the outputs name it as A1111 does."""

    name: str
    weight: float
    sha256: str = ""  # of the whole file, as the PC that accepted the job found it
    short_hash: str = ""  # A1111's "Lora hashes" value (12 hex digits of the tensors' SHA-256)


@dataclass(frozen=True)
class JobSpec:
    """A validated request; build it with `farm.jobs.jobspec.make_job`, which checks every field."""

    model: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    width: int
    height: int
    guidance: float
    sampler: str
    negative_prompt: str = ""
    priority: int = 0
    owner: str = "local"
    frames: int = 1  # 1 for images; a video model's frame count
    loras: tuple[Lora, ...] = ()  # adapters applied to every step of every sample
    # img2img: the SHA-256 of the init image's bytes (a blob of the head's store; "" for text only),
    # how much of it is re-noised, and the first of `steps` scheduler steps that runs (diffusers'
    # `get_timesteps`, whose rounding differs by family: `farm.jobs.init_image.first_step`).
    init_image: str = ""
    strength: float = 1.0
    first_step: int = 0

    @property
    def run_steps(self) -> int:
        """The steps a shard actually runs: every one for text, the last `steps - first_step` for
        img2img. Segment bounds, progress and checkpoints count in these."""
        return self.steps - self.first_step

    def samples(self) -> tuple[Sample, ...]:
        """Every prompt once per seed, prompt-major, so sample indices are stable across runs."""
        pairs = [(p, s) for p in self.prompts for s in self.seeds]
        return tuple(Sample(i, p, s) for i, (p, s) in enumerate(pairs))


@dataclass(frozen=True)
class NodeInfo:
    """One GPU of one PC as the scheduler sees it.

    `speed` is relative throughput (1.0 = the reference card); the scheduler uses it for shares until
    it has measured the node.
    """

    name: str
    vram_gib: float
    speed: float = 1.0
    gpu: str = "unknown"
    simulated: bool = False
    # The CUDA device of its PC this node runs on (NVML's index); None: a simulated node (the CPU).
    gpu_index: int | None = None


@dataclass(frozen=True)
class Shard:
    """Samples of one job batched for one node (`home`); `bounds` are its segments' step ranges."""

    id: str
    job_id: str
    sample_indices: tuple[int, ...]
    home: str
    bounds: tuple[tuple[int, int], ...]
    need_gib: float
    memory_mode: str = "full"  # a costmodel.MemoryMode: how the node holds the model for this shard
    # (memory mode, peak GiB) for every mode that holds this batch, cheapest in time first: another
    # node may run a segment in a leaner mode than the home's, since the checkpoint is the same.
    needs: tuple[tuple[str, float], ...] = ()
    # (memory mode, peak GiB) of the decode where it fits no mode of `home`: then the last of `bounds`
    # is an empty segment `(end, end)` that only decodes, from the checkpoint, on a node it fits.
    # Empty: the last denoising segment decodes on its node.
    decode_needs: tuple[tuple[str, float], ...] = ()
    # Likewise for the encode (text encoders, an init image's encoders): then the first of `bounds` is
    # an empty segment `(0, 0)` that only encodes and returns the first checkpoint.
    encode_needs: tuple[tuple[str, float], ...] = ()

    @property
    def batch(self) -> int:
        return len(self.sample_indices)

    def decode_only(self, index: int) -> bool:
        """Segment `index` runs no step, only the decode (priced by `decode_needs`, not `needs`)."""
        return bool(self.decode_needs) and index == len(self.bounds) - 1

    def encode_only(self, index: int) -> bool:
        """Segment `index` runs no step, only the encode (priced by `encode_needs`, not `needs`)."""
        return bool(self.encode_needs) and index == 0


@dataclass(frozen=True)
class ReadySegment:
    """A segment whose previous segment is done, waiting for a node."""

    shard_id: str
    index: int
    home: str
    need_gib: float
    job_id: str = ""  # for queue order (`farm.core.order.order_ready`); derived from shard_id when empty
    model: str = ""  # lets a node that already holds this model take the segment first
    priority: int = 0  # the job's priority: a node keeps to the model it holds only within one priority
    needs: tuple[tuple[str, float], ...] = ()  # the shard's `needs`; empty: only `need_gib`
    decode_only: bool = False  # runs no step, only the shard's decode (`Shard.decode_needs`)
    encode_only: bool = False  # runs no step, only the shard's encode (`Shard.encode_needs`)

    @property
    def stage_only(self) -> bool:
        """A segment of one stage that fits no mode of the shard's home: it runs elsewhere, the home stays."""
        return self.decode_only or self.encode_only


@dataclass(frozen=True)
class NodeState:
    """A node as one planner tick sees it.

    `loaded` names the models it holds in memory; `peak_factor` scales the cost model's predictions
    for this node (`costmodel.peak_correction` of its observed peaks).
    """

    info: NodeInfo
    busy: bool = False
    online: bool = True
    loaded: frozenset[str] = frozenset()
    peak_factor: float = 1.0


@dataclass(frozen=True)
class Assignment:
    """Run segment `index` of shard `shard_id` on node `node` (in `memory_mode`; empty: the shard's)."""

    node: str
    shard_id: str
    index: int
    memory_mode: str = ""


@dataclass(frozen=True)
class StepRun:
    """Provenance: which node rendered which steps of a sample."""

    node: str
    gpu: str
    start: int
    end: int
    memory_mode: str = "full"
    seconds: float = 0.0  # the segment's time on that node (load and decode included)
    precision: str = ""  # the dtypes it ran in, e.g. "bf16 (vae fp32)"
    stages: str = ""  # what it ran of the pipeline: "encode", "denoise", "decode" joined by "+"


@dataclass
class NodeTally:
    """Per-node work counts for the summary a run prints."""

    samples: int = 0  # samples this node finished (ran the last segment and decoded)
    shards: int = 0  # distinct shards this node ran at least one segment of
    segments: int = 0
    steps: int = 0  # sample-steps rendered: the node's share of the denoising work
    seconds: float = 0.0
    shard_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class SegmentTask:
    """What the coordinator sends a node: run steps `[start, end)` of one shard.

    `checkpoint` is the msgpack checkpoint of the previous segment (None for the first, which
    encodes the prompts); after the shard's last step the node decodes and returns images.
    `init_image` is the job's init image (its file's bytes), sent only with the first segment: that
    node encodes it into the first checkpoint, later segments need only the checkpoint.
    """

    job: JobSpec
    shard_id: str
    samples: tuple[Sample, ...]
    index: int
    start: int
    end: int
    checkpoint: bytes | None
    memory_mode: str = "full"
    init_image: bytes | None = None
    # False where a decode-only segment follows on another node: reaching the last step then returns
    # a checkpoint, not images.
    decode: bool = True

    @property
    def last(self) -> bool:
        """The segment decodes after its steps and returns images."""
        return self.end == self.job.run_steps and self.decode


@dataclass(frozen=True)
class SegmentResult:
    """What a node returns: the next checkpoint, or (after the last step) RGB images as raw bytes."""

    shard_id: str
    index: int
    node: str
    gpu: str
    seconds: float
    checkpoint: bytes | None = None
    images: tuple[bytes, ...] = ()
    denoise_seconds: float = 0.0  # the steps alone (no load, encode or decode): what speeds learn from
    memory_mode: str = "full"
    previews: tuple[bytes, ...] = ()  # one small PNG per sample after a middle segment
    # The step the segment reached when its node was asked to stop early (pause): the checkpoint is
    # at that step, and the rest of the segment's steps run later, maybe elsewhere. None: finished.
    stopped_at: int | None = None
    peak_gib: float = 0.0  # measured peak VRAM of the segment (0 when unknown): refines the cost model
    loaded: tuple[str, ...] = ()  # the models the node holds after the segment (the head's one source for it)
    precision: str = ""  # the dtypes it ran in, e.g. "bf16 (vae fp32)"


@dataclass(frozen=True)
class StepEvent:
    """A node finished one denoising step of a shard (drives the progress bars)."""

    node: str
    shard_id: str
    step: int
    batch: int
