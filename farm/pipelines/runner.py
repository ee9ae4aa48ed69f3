"""The node side of a segment, without Ray: the Ray actor wraps it, and GPU benchmarks drive it
directly (the GPU machines have no Ray).

It keeps recently used models' engines (a node that runs the next segment of the same model pays
no load, in whatever memory mode the segment asks for), and turns a `SegmentTask` into a
`SegmentResult`: checkpoint in, checkpoint out. A segment of no steps that ends the shard (a
decode-only one) loads the VAE and nothing else: restoring a checkpoint loads no pipeline, and an
empty step range no denoiser. One of no steps that starts it (an encode-only one) loads the encode
stage (and the VAE, for an init image) and returns the first checkpoint. On a GPU it synchronises
before reading a clock (CUDA calls return before the work is done) and reports the segment's peak
allocated memory, which the cost model's per-node correction learns from.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from farm.contracts.domain import Lora, NodeInfo, SegmentResult, SegmentTask
from farm.contracts.errors import CheckpointError
from farm.jobs.catalog import get_model
from farm.pipelines import schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.pipelines.loader import builtin_folder, pick_device
from farm.pipelines.preview import preview_pngs
from farm.pipelines.quiet import quiet_libraries
from farm.wire import checkpoint_codec as wire

# (model, heartbeat, should_stop) -> the folder a model only the head holds was fetched into, or None
ModelFetch = Callable[[str, Callable[[], None] | None, Callable[[], bool] | None], Path | None]
# (a job's adapters, the adapter home, heartbeat, should_stop): each put in `<home>/loras/` with its pinned hash
LoraFetch = Callable[[tuple[Lora, ...], Path | None, Callable[[], None] | None, Callable[[], bool] | None], None]


class SegmentRunner:
    def __init__(self, node: NodeInfo, home: Path | None = None, max_models: int = 1,
                 threads: int | None = None, device: torch.device | None = None,
                 fetch: ModelFetch | None = None, fetch_loras: LoraFetch | None = None) -> None:
        quiet_libraries()
        if threads:
            torch.set_num_threads(threads)
        self.node = node
        self.home = home
        self.device = device or pick_device()
        self.max_models = max_models
        self.engines: OrderedDict[str, Engine] = OrderedDict()
        self.fetch = fetch  # a joined PC's model sync (node.model_fetch): models only the head holds
        self.fetch_loras = fetch_loras  # and the adapters a job names that this PC lacks

    def engine(self, model: str, memory_mode: str = "full", heartbeat: Callable[[], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Engine:
        """The engine for `model`, held in `memory_mode` (a loaded model switches mode in memory),
        creating it when needed; the least recently used engine is closed to make room."""
        if model in self.engines:
            self.engines.move_to_end(model)
            engine = self.engines[model]
            engine.use(memory_mode)
            return engine
        while len(self.engines) >= self.max_models:
            _, evicted = self.engines.popitem(last=False)
            evicted.close()
        synced = self.fetch(model, heartbeat, should_stop) if self.fetch is not None else None
        source = str(synced) if synced is not None else model  # a fetched model loads from its snapshot
        info = get_model(source)
        engine = Engine(get_family(info.family), builtin_folder(source, self.home), model, self.device,
                        memory_mode=memory_mode, home=self.home)
        self.engines[model] = engine
        return engine

    def release(self) -> None:
        """Close every loaded engine (its GPU memory goes back to the driver): a paused node frees its GPU."""
        while self.engines:
            _, engine = self.engines.popitem(last=False)
            engine.close()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else 0.0

    def run(self, task: SegmentTask, on_step: Callable[[int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> SegmentResult:
        """Run the task's steps; `on_step(step)` after each whole step; `should_stop()` lets a pause
        end the segment early at a step boundary (the result then says where: `stopped_at`)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        began = time.perf_counter()
        job = task.job
        heartbeat = (lambda: on_step(task.start)) if on_step is not None else None
        engine = self.engine(job.model, task.memory_mode, heartbeat, should_stop)
        if job.loras and self.fetch_loras is not None:  # before the engine resolves them (`adapters.resolve`)
            self.fetch_loras(job.loras, self.home, heartbeat, should_stop)
        ends = schedulers.whole_step_ends(job.sampler, job.run_steps)
        start, end = ends[task.start], ends[task.end]
        step_of = {evaluation: step for step, evaluation in enumerate(ends)}

        def stepped(evaluation: int) -> None:
            if on_step is not None and evaluation in step_of:
                on_step(step_of[evaluation])
        if task.checkpoint is None:
            if task.start != 0:
                raise CheckpointError(f"segment {task.index} of {task.shard_id} starts at step {task.start} "
                                      "without a checkpoint")
            live = engine.encode(job, task.samples, task.init_image)
        else:
            cp = wire.decode(task.checkpoint)
            if cp.step != start or cp.seeds != tuple(s.seed for s in task.samples):
                raise CheckpointError(f"checkpoint of {task.shard_id} is at evaluation {cp.step}, "
                                      f"segment starts at {start}")
            live = engine.from_checkpoint(cp, job)
        self._sync()
        denoise_began = time.perf_counter()
        live = engine.denoise(live, end, stepped, should_stop)
        self._sync()
        common = dict(shard_id=task.shard_id, index=task.index, node=self.node.name, gpu=self.node.gpu,
                      memory_mode=engine.mode_used, denoise_seconds=time.perf_counter() - denoise_began,
                      precision=engine.precision.describe(), loaded=tuple(self.engines))
        stopped_at = step_of[live.step] if live.step < end else None
        if task.last and stopped_at is None:
            images = tuple(a.tobytes() for a in engine.decode(live))
            self._sync()
            return SegmentResult(**common, seconds=time.perf_counter() - began, images=images,
                                 peak_gib=self._peak_gib())
        payload = wire.encode(engine.to_checkpoint(live))
        previews = preview_pngs(engine.family.spatial_latents(live), engine.family.name)
        return SegmentResult(**common, seconds=time.perf_counter() - began, checkpoint=payload, previews=previews,
                             stopped_at=stopped_at, peak_gib=self._peak_gib())
