"""The node side of a segment, without Ray: the Ray actor wraps it, and GPU benchmarks drive it
directly (the GPU machines have no Ray).

It keeps recently used pipelines loaded (a node that runs the next segment of the same model pays
no load), and turns a `SegmentTask` into a `SegmentResult`: checkpoint in, checkpoint out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from farm import wire
from farm.errors import CheckpointError
from farm.model import NodeInfo, SegmentResult, SegmentTask
from farm.pipelines.loader import builtin_folder, load_pipeline, pick_device
from farm.pipelines.sd import SDSegments


class SegmentRunner:
    def __init__(self, node: NodeInfo, home: Path | None = None, max_models: int = 1,
                 threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.node = node
        self.home = home
        self.device = pick_device()
        self.max_models = max_models
        self.loaded: OrderedDict[str, SDSegments] = OrderedDict()
        self.loads = 0

    def engine(self, model: str) -> SDSegments:
        """The loaded pipeline for `model`, loading it (and evicting the oldest) when needed."""
        if model in self.loaded:
            self.loaded.move_to_end(model)
            return self.loaded[model]
        while len(self.loaded) >= self.max_models:
            self.loaded.popitem(last=False)
        engine = SDSegments(load_pipeline(builtin_folder(model, self.home), self.device), model)
        self.loaded[model] = engine
        self.loads += 1
        return engine

    def run(self, task: SegmentTask, on_step: Callable[[int], None] | None = None) -> SegmentResult:
        began = time.perf_counter()
        engine = self.engine(task.job.model)
        if task.checkpoint is None:
            if task.start != 0:
                raise CheckpointError(f"segment {task.index} of {task.shard_id} starts at step {task.start} without a checkpoint")
            live = engine.encode(task.job, task.samples)
        else:
            cp = wire.decode(task.checkpoint)
            if cp.step != task.start or cp.seeds != tuple(s.seed for s in task.samples):
                raise CheckpointError(f"checkpoint of {task.shard_id} is at step {cp.step}, segment starts at {task.start}")
            live = engine.from_checkpoint(cp, task.job)
        live = engine.denoise(live, task.end, on_step)
        common = dict(shard_id=task.shard_id, index=task.index, node=self.node.name, gpu=self.node.gpu)
        if task.last:
            images = tuple(engine.decode(live))
            return SegmentResult(**common, seconds=time.perf_counter() - began, images=images)
        payload = wire.encode(engine.to_checkpoint(live))
        return SegmentResult(**common, seconds=time.perf_counter() - began, checkpoint=payload)
