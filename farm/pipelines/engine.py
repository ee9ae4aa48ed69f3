"""The generic segment engine: any family's denoising loop, cut at step boundaries.

Stages load only what they need: `encode` the text encoders, `denoise` the UNet or transformer,
`decode` the VAE (everything else is passed as None to `from_pretrained`). The checkpoint carries
the prompt conditioning, so a node that runs middle segments never loads text encoders or a VAE.
Every run of a segment is deterministic: the same checkpoint gives the same latents, so a retry
is always safe.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from farm.contracts.domain import JobSpec, Sample
from farm.contracts.errors import CheckpointError
from farm.pipelines import memory, schedulers
from farm.pipelines.families import Family
from farm.pipelines.families.base import Live
from farm.pipelines.quiet import quiet_libraries
from farm.pipelines.tensors import from_raw, to_raw
from farm.wire.checkpoint import Checkpoint

OPTIONAL = {"safety_checker", "feature_extractor", "image_encoder"}


def component_configs(folder: Path) -> dict[str, dict]:
    """Each component's config.json (tiny files; no weights are read)."""
    out = {}
    for sub in folder.iterdir():
        cfg = sub / "config.json"
        if sub.is_dir() and cfg.exists():
            out[sub.name] = json.loads(cfg.read_text(encoding="utf-8"))
    return out


def scheduler_config(folder: Path, index: dict) -> dict:
    """The model's scheduler config as its pipeline loads it (class defaults filled in), without
    loading a pipeline: samplers are made from it."""
    library, name = index["scheduler"]
    return getattr(importlib.import_module(library), name).from_pretrained(str(folder), subfolder="scheduler").config


class Engine:
    """Runs one model's stages on one device, loading each stage's components on first use."""

    def __init__(self, family: Family, folder: Path, model_name: str, device: torch.device,
                 dtype: torch.dtype | None = None, memory_mode: str = "full") -> None:
        quiet_libraries()
        self.family = family
        self.folder = folder
        self.model_name = model_name
        self.device = device
        self.dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        self.configs = component_configs(folder)
        self.index = DiffusionPipeline.load_config(str(folder))
        self.scheduler_config = scheduler_config(folder, self.index)
        self.pipes: dict[str, DiffusionPipeline] = {}
        self.loads = 0
        self.memory_mode = memory_mode
        self.mode_used = memory.effective(memory_mode, device)

    def pipe(self, stage: str) -> DiffusionPipeline:
        """The pipeline with only `stage`'s components loaded (scheduler always)."""
        if stage not in self.pipes:
            keep = set(self.family.stages[stage])
            skip = {
                name: None for name, spec in self.index.items()
                if not name.startswith("_") and isinstance(spec, list) and name != "scheduler" and name not in keep
            }
            extra = {"requires_safety_checker": False} if "requires_safety_checker" in self.index else {}
            pipe = self.family.pipeline_class.from_pretrained(str(self.folder), torch_dtype=self.dtype, **skip, **extra)
            pipe.set_progress_bar_config(disable=True)
            denoisers = tuple(c for s, cs in self.family.stages.items() if s not in ("encode", "decode") for c in cs)
            memory.apply(pipe, self.memory_mode, self.device, denoisers)
            self.family.prepare_stage(pipe, stage, self.configs)
            self.pipes[stage] = pipe
            self.loads += 1
        return self.pipes[stage]

    def loaded_components(self) -> set[str]:
        return {c for stage in self.pipes if stage in self.family.stages for c in self.family.stages[stage]}

    def _generators(self, seeds: tuple[int, ...]) -> list[torch.Generator]:
        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def encode(self, job: JobSpec, samples: tuple[Sample, ...]) -> Live:
        """Encode prompts and draw initial latents: the state before step 0."""
        pipe = self.pipe("encode")
        cond = self.family.encode(pipe, job, samples)
        seeds = tuple(s.seed for s in samples)
        generators = self._generators(seeds)
        scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        latents = self.family.init_latents(pipe, job, cond, generators, scheduler, self.configs)
        self.family.set_timesteps(pipe, job, scheduler, tuple(latents.shape))
        return Live(job, seeds, latents, cond, scheduler, generators)

    def denoise(self, live: Live, end: int, on_step: Callable[[int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> Live:
        """Run loop iterations `[live.step, end)`; `end` must be a whole-step boundary.

        `should_stop` is asked after every iteration that ends a whole step: when it says yes the
        loop returns early (the node is being paused) and `live.step` says how far it got.
        """
        schedulers.check_cut(live.job.sampler, live.job.steps, end)
        ends = set(schedulers.whole_step_ends(live.job.sampler, live.job.steps))
        for i in range(live.step, end):
            # Two-stage models (SDXL's refiner, Wan 2.2's experts) run some iterations on another denoiser.
            pipe = self.pipe(self.family.denoiser_stage(self.index, live, i))
            pipe.scheduler = live.scheduler  # pipeline helpers (prepare_extra_step_kwargs...) read self.scheduler
            live.latents = self.family.step(pipe, live, i)
            live.step = i + 1
            if on_step is not None:
                on_step(i + 1)
            if should_stop is not None and live.step in ends and live.step < end and should_stop():
                break
        return live

    def decode(self, live: Live) -> list[np.ndarray]:
        return self.family.decode(self.pipe("decode"), live)

    def to_checkpoint(self, live: Live) -> Checkpoint:
        job = live.job
        return Checkpoint(
            model=self.model_name,
            family=self.family.name,
            sampler=job.sampler,
            step=live.step,
            steps=job.steps,
            guidance=job.guidance,
            width=job.width,
            height=job.height,
            frames=job.frames,
            seeds=live.seeds,
            latents=to_raw(live.latents),
            conditioning={k: to_raw(v) for k, v in live.cond.items()},
            scheduler_state=schedulers.capture(live.scheduler),
            rng_states=tuple(g.get_state().numpy().tobytes() for g in live.generators),
        )

    def from_checkpoint(self, cp: Checkpoint, job: JobSpec) -> Live:
        if (cp.model, cp.family, cp.sampler, cp.steps) != (self.model_name, self.family.name, job.sampler, job.steps):
            raise CheckpointError(
                f"checkpoint is for {cp.model}/{cp.family}/{cp.sampler}/{cp.steps} steps, "
                f"not {self.model_name}/{self.family.name}/{job.sampler}/{job.steps}"
            )
        latents = from_raw(cp.latents, self.device)
        # The checkpoint holds the scheduler's whole state (timesteps included), so no pipeline loads
        # here: the stage that runs the next iteration loads its own denoiser, and only that one.
        scheduler = schedulers.make(job.sampler, self.scheduler_config)
        schedulers.restore(scheduler, cp.scheduler_state, self.device)
        generators = self._generators(cp.seeds)
        for g, state in zip(generators, cp.rng_states):
            g.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        cond = {k: from_raw(v, self.device) for k, v in cp.conditioning.items()}
        return Live(job, cp.seeds, latents, cond, scheduler, generators, step=cp.step)

    def plain(self, job: JobSpec, samples: tuple[Sample, ...]) -> list[np.ndarray]:
        """The uncut baseline: the whole pipeline, one ordinary call (tests and benchmarks)."""
        if "all" not in self.pipes:
            pipe = self.family.pipeline_class.from_pretrained(str(self.folder), torch_dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self.pipes["all"] = pipe.to(self.device)
        return self.family.plain(self.pipes["all"], job, samples)
