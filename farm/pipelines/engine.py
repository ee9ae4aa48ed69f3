"""The generic segment engine: any family's denoising loop, cut at step boundaries.

Stages load only what they need: `encode` the text encoders, `denoise` the UNet or transformer,
`decode` the VAE (everything else is passed as None to `from_pretrained`). The checkpoint carries
the prompt conditioning, so a node that runs middle segments never loads text encoders or a VAE.
Every run of a segment is deterministic: the same checkpoint gives the same latents, so a retry
is always safe.

A checkpoint is portable: noise comes from CPU generators (the same numbers on every machine, and
a state any node can restore), and a receiving node casts the tensors to its own dtype and device,
so a shard may move between a CPU node, an fp16 card and a bf16 card between any two segments.
"""

from __future__ import annotations

import gc
import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from farm.contracts.domain import JobSpec, Sample
from farm.contracts.errors import CheckpointError
from farm.jobs.sources import check_index
from farm.pipelines import conditioning, memory, precision, schedulers
from farm.pipelines.adapters import StageAdapters
from farm.pipelines.families import Family
from farm.pipelines.families.base import Live
from farm.pipelines.loader import variant_for
from farm.pipelines.quiet import quiet_libraries
from farm.pipelines.tensors import from_raw, to_raw
from farm.wire.checkpoint import Checkpoint, RawTensor

OPTIONAL = {"safety_checker", "feature_extractor", "image_encoder"}
# A conditioning entry saying the latents were channels-last. The UNet's float sums follow the
# latents' memory layout, and img2img latents keep the layout of the VAE-encoded image (channels-last
# where diffusers' image processor hands the VAE an NHWC view), while a checkpoint's bytes are always
# contiguous: a resumed shard restores the layout, so its run stays the uncut run bit for bit.
CHANNELS_LAST = "_farm_latents_channels_last"


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


def _channels_last(value: object) -> object:
    """4-D tensors (alone or in lists) channels-last; everything else as it is."""
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return value.to(memory_format=torch.channels_last)
    if isinstance(value, list):
        return [_channels_last(v) for v in value]
    return value


class Engine:
    """Runs one model's stages on one device, loading each stage's components on first use.

    `preloaded` are modules built elsewhere (bench/gpu_check.py's random full-size weights): they are
    handed to `from_pretrained` instead of being read from the folder, which then needs only configs.
    """

    def __init__(self, family: Family, folder: Path, model_name: str, device: torch.device,
                 dtype: torch.dtype | None = None, memory_mode: str = "full",
                 preloaded: Mapping[str, torch.nn.Module] | None = None, home: Path | None = None) -> None:
        quiet_libraries()
        self.family = family
        self.folder = folder
        self.model_name = model_name
        self.device = device
        self.precision = precision.policy(family.name, device, dtype)
        self.dtype = self.precision.dtype
        self.configs = component_configs(folder)
        # Checked before diffusers reads it: it imports the library each component names.
        self.index = check_index(model_name, DiffusionPipeline.load_config(str(folder)))
        self.scheduler_config = scheduler_config(folder, self.index)
        self.preloaded = dict(preloaded or {})
        self.pipes: dict[str, DiffusionPipeline] = {}
        # LoRA adapters loaded into each stage's pipeline, on top of base weights loaded once.
        self.adapters: dict[str, StageAdapters] = {}
        self.home = home  # where this PC's adapter files are (`farm.jobs.loras`)
        self.parked: set[str] = set()  # stages whose components wait in CPU memory (full mode)
        self.loads = 0
        self.memory_mode = memory_mode
        self.mode_used = memory.effective(memory_mode, device)

    @property
    def placement(self) -> str:
        return memory.parse(self.mode_used)[0]

    def use(self, memory_mode: str) -> None:
        """Hold the model in `memory_mode` from now on. Loaded components are re-placed in memory and
        the VAE's tiling switched: nothing is read from disk again."""
        used = memory.effective(memory_mode, self.device)
        placement, tiled = memory.parse(used)
        if placement != self.placement:
            for stage, pipe in self.pipes.items():
                memory.unplace(pipe)
                if stage not in self.parked:
                    memory.place(pipe, placement, self.device)
        for pipe in self.pipes.values():
            memory.set_tiling(pipe, tiled)
        self.memory_mode, self.mode_used = memory_mode, used

    def _load(self, keep: set[str] | None) -> DiffusionPipeline:
        """The pipeline from the folder with only `keep`'s components (None: all): safetensors only,
        the fp16/bf16 variant where the folder has one for every component loaded."""
        wanted = {name for name, spec in self.index.items() if not name.startswith("_") and isinstance(spec, list)}
        keep = wanted if keep is None else keep
        skip = {name: None for name in wanted if name != "scheduler" and name not in keep}
        extra = {"requires_safety_checker": False} if "requires_safety_checker" in self.index else {}
        given = {name: m for name, m in self.preloaded.items() if name in keep}
        variant = variant_for(self.folder, keep - set(given), self.dtype)
        pipe = self.family.pipeline_class.from_pretrained(
            str(self.folder), torch_dtype=self.precision.load_arg(), use_safetensors=True, variant=variant,
            **skip, **extra, **given)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipe(self, stage: str) -> DiffusionPipeline:
        """The pipeline with only `stage`'s components loaded (scheduler always), placed as the
        memory mode says."""
        if stage not in self.pipes:
            pipe = self._load(set(self.family.stages[stage]))
            memory.place(pipe, self.placement, self.device)
            memory.set_tiling(pipe, memory.parse(self.mode_used)[1])
            self.family.prepare_stage(pipe, stage, self.configs)
            self.pipes[stage] = pipe
            self.adapters[stage] = StageAdapters()
            self.loads += 1
        elif stage in self.parked:
            memory.place(self.pipes[stage], self.placement, self.device)
            self.parked.discard(stage)
        return self.pipes[stage]

    def release(self, stage: str) -> None:
        """A stage is done: offload hooks put its model back in CPU memory, and in full mode on a GPU
        the text encoders wait in CPU memory until the next shard's encode (they would otherwise hold
        gigabytes through every middle segment)."""
        pipe = self.pipes.get(stage)
        if pipe is None:
            return
        memory.release(pipe)
        if stage == "encode" and self.placement == "full" and self.device.type != "cpu":
            pipe.to("cpu")
            self.parked.add(stage)

    def close(self) -> None:
        """Free everything this engine holds: hooks removed (they keep references to the modules),
        pipelines dropped, garbage collected, the CUDA cache emptied."""
        for pipe in self.pipes.values():
            memory.unplace(pipe)
        self.pipes.clear()
        self.adapters.clear()
        self.parked.clear()
        self.preloaded.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def adapted(self, stage: str, job: JobSpec) -> DiffusionPipeline:
        """A denoising stage's pipeline with exactly the job's LoRA adapters on, at their weights
        (none: off). Adapters touch only denoisers, so encoding never needs them."""
        pipe = self.pipe(stage)
        self.adapters[stage].apply(pipe, job.loras, self.home)
        return pipe

    @property
    def adapter_loads(self) -> int:
        """Adapter files loaded into pipelines so far (the base weights are `loads`)."""
        return sum(a.loads for a in self.adapters.values())

    def loaded_components(self) -> set[str]:
        return {c for stage in self.pipes if stage in self.family.stages for c in self.family.stages[stage]}

    @staticmethod
    def _generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
        """CPU generators, as diffusers recommends for reproducibility: the same noise on any device,
        and a state every node can restore (a CUDA generator's state means nothing to a CPU)."""
        return [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def encode(self, job: JobSpec, samples: tuple[Sample, ...], init_image: bytes | None = None) -> Live:
        """Encode prompts and draw initial latents: the state before step 0. An img2img job's init
        image (its file's bytes) is encoded by the VAE, the decode stage's components, and noised to
        the job's first step; the checkpoint then carries it, so no later segment needs the image.
        An image-to-video job's image goes through the encode stage's image encoder too, and its
        VAE encoding stays in the conditioning beside the noise."""
        pipe = self.pipe("encode")
        cond = self.family.encode(pipe, job, samples)
        seeds = tuple(s.seed for s in samples)
        generators = self._generators(seeds)
        scheduler = schedulers.make(job.sampler, pipe.scheduler.config)
        if job.init_image:
            if init_image is None:
                raise CheckpointError("the first segment of a job with an init image came without it")
            image = conditioning.load_image(init_image)
            cond.update(self.family.encode_image(pipe, job, image))
            vae = self.pipe("decode")
            latents = self.family.image_latents(vae, job, cond, image, generators, scheduler, self.configs)
            self.release("decode")
        else:
            latents = self.family.init_latents(pipe, job, cond, generators, scheduler, self.configs)
            self.family.set_timesteps(pipe, job, scheduler, tuple(latents.shape))
        self.release("encode")
        return Live(job, seeds, latents, cond, scheduler, generators)

    def denoise(self, live: Live, end: int, on_step: Callable[[int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> Live:
        """Run loop iterations `[live.step, end)`; `end` must be a whole-step boundary.

        `should_stop` is asked after every iteration that ends a whole step: when it says yes the
        loop returns early (the node is being paused) and `live.step` says how far it got.
        """
        job = live.job
        schedulers.check_cut(job.sampler, job.run_steps, end)
        ends = set(schedulers.whole_step_ends(job.sampler, job.run_steps))
        # Iterations count from the first that runs; the scheduler's schedule from its first step
        # (img2img skips `first_step` steps, as diffusers' `get_timesteps` slices them off).
        skipped = schedulers.whole_step_ends(job.sampler, job.steps)[job.first_step]
        used: list[str] = []
        for i in range(live.step, end):
            # Two-stage models (SDXL's refiner, Wan 2.2's experts) run some iterations on another denoiser.
            stage = self.family.denoiser_stage(self.index, live, skipped + i)
            if stage not in used:
                for done in used:
                    self.release(done)  # the first expert leaves before the second one loads
                used.append(stage)
                self.adapted(stage, live.job)
            pipe = self.pipe(stage)
            pipe.scheduler = live.scheduler  # pipeline helpers (prepare_extra_step_kwargs...) read self.scheduler
            live.latents = self.family.step(pipe, live, skipped + i)
            live.step = i + 1
            if on_step is not None:
                on_step(i + 1)
            if should_stop is not None and live.step in ends and live.step < end and should_stop():
                break
        for stage in used:
            self.release(stage)
        return live

    def decode(self, live: Live) -> list[np.ndarray]:
        images = self.family.decode(self.pipe("decode"), live)
        self.release("decode")
        return images

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
            conditioning={**{k: to_raw(v) for k, v in live.cond.items()}, **self._layout(live.latents)},
            scheduler_state=schedulers.capture(live.scheduler, self.device),
            rng_states=tuple(g.get_state().numpy().tobytes() for g in live.generators),
        )

    def from_checkpoint(self, cp: Checkpoint, job: JobSpec) -> Live:
        if (cp.model, cp.family, cp.sampler, cp.steps) != (self.model_name, self.family.name, job.sampler, job.steps):
            raise CheckpointError(
                f"checkpoint is for {cp.model}/{cp.family}/{cp.sampler}/{cp.steps} steps, "
                f"not {self.model_name}/{self.family.name}/{job.sampler}/{job.steps}"
            )
        # The sender's dtype need not be ours: latents take the dtype this family keeps them in here,
        # floating conditioning this engine's dtype; integer tensors (masks, grids) stay as they are.
        latent_dtype = self.family.latent_dtype(self.dtype)
        latents = from_raw(cp.latents, self.device).to(latent_dtype)
        # The checkpoint holds the scheduler's whole state (timesteps included), so no pipeline loads
        # here: the stage that runs the next iteration loads its own denoiser, and only that one.
        scheduler = schedulers.make(job.sampler, self.scheduler_config)
        schedulers.restore(scheduler, cp.scheduler_state, self.device, latent_dtype)
        generators = self._generators(cp.seeds)
        for g, state in zip(generators, cp.rng_states):
            try:
                g.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
            except RuntimeError as e:
                raise CheckpointError(
                    f"checkpoint: RNG state of {len(state)} bytes is not a CPU generator's ({e})") from None
        cond = {k: self._cast(from_raw(v, self.device)) for k, v in cp.conditioning.items() if k != CHANNELS_LAST}
        if CHANNELS_LAST in cp.conditioning:  # the latents and the history made from them (UniPC's einsum)
            latents = latents.to(memory_format=torch.channels_last)
            for key, value in vars(scheduler).items():
                setattr(scheduler, key, _channels_last(value))
        return Live(job, cp.seeds, latents, cond, scheduler, generators, step=cp.step)

    @staticmethod
    def _layout(latents: torch.Tensor) -> dict[str, RawTensor]:
        """The `CHANNELS_LAST` marker for latents held channels-last (nothing for contiguous ones)."""
        if latents.ndim == 4 and not latents.is_contiguous() \
                and latents.is_contiguous(memory_format=torch.channels_last):
            return {CHANNELS_LAST: to_raw(torch.ones(1, dtype=torch.uint8))}
        return {}

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def plain(self, job: JobSpec, samples: tuple[Sample, ...], init_image: bytes | None = None) -> list[np.ndarray]:
        """The uncut baseline: the whole pipeline, one ordinary call in this engine's memory mode
        (tests and benchmarks)."""
        if "all" not in self.pipes:
            pipe = self._load(None)
            memory.place(pipe, self.placement, self.device)
            memory.set_tiling(pipe, memory.parse(self.mode_used)[1])
            self.pipes["all"] = pipe
            self.adapters["all"] = StageAdapters()
        self.adapters["all"].apply(self.pipes["all"], job.loras, self.home)
        if job.init_image:
            return self.family.plain_image(self.pipes["all"], job, samples, conditioning.load_image(init_image or b""))
        return self.family.plain(self.pipes["all"], job, samples)
