"""What a segment hand-off costs, as a ratio of one denoising step.

A hand-off is: checkpoint the state (tensors to bytes, msgpack), decode it on the next node, and
resume (rebuild the scheduler, restore its state and the RNGs, tensors back on the device).

Two tables, one run:

1. Tiny built-in models on this CPU: hand-off time against one step of the same model, both
   measured here, in this process.
2. Full-size latent and prompt-embedding shapes (from ../shared/data/): the hand-off measured on
   this CPU against the per-step time measured on an H100 (gpu_backbones_h100.json). A GPU node's
   hand-off adds a device-to-host copy of a few MB (microseconds at PCIe speeds), so this ratio
   is an upper bound on a GPU node's, set by this CPU's speed.

Run: .venv/bin/python bench/segments.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from farm.jobs.catalog import MODELS
from farm.jobs.init_image import IMAGE_REQUIRED
from farm.jobs.jobspec import make_job
from farm.pipelines import schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import FAMILIES, get_family
from farm.pipelines.loader import builtin_folder
from farm.pipelines.tensors import from_raw, to_raw
from farm.wire import checkpoint_codec as wire
from farm.wire.checkpoint import Checkpoint

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpu_backbones_h100.json"

# Full-size shapes (batch 1, guidance doubles the embeddings): latents (C, F, H, W) or (C, H, W), and
# the prompt conditioning each family's denoiser consumes, with the H100 row it is compared to.
FULL_SIZE = {
    "sd15 512x512": ("sd15_unet_512", (4, 64, 64), {"prompt_embeds": (2, 77, 768)}, "ddim"),
    "sdxl 1024x1024": ("sdxl_unet_1024", (4, 128, 128),
                       {"prompt_embeds": (2, 77, 2048), "pooled": (2, 1280), "time_ids": (2, 6)}, "dpmpp_2m"),
    "ltxv 768x512x121": ("ltxv_2b_768x512x121", (6144, 128), {"prompt_embeds": (2, 128, 4096), "mask": (2, 128)},
                         "flow_euler"),
    "wan21 832x480x81": ("wan21_1.3b_832x480x81", (16, 21, 60, 104), {"prompt_embeds": (2, 512, 4096)}, "unipc"),
    "hunyuan15 848x480x121": ("hunyuanvideo15_8.3b_848x480x121", (32, 31, 30, 53),
                              {"prompt_embeds": (2, 1000, 3584), "mask": (2, 1000)}, "flow_euler"),
}


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median seconds of `repeat` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def handoff(engine: Engine, live, job) -> float:
    def once() -> None:
        payload = wire.encode(engine.to_checkpoint(live))
        engine.from_checkpoint(wire.decode(payload), job)

    return timed(once)


def tiny_rows() -> list[tuple[str, float, float, int]]:
    rows = []
    for name, info in MODELS.items():
        if info.family not in FAMILIES or info.bundled or info.family in IMAGE_REQUIRED:
            continue  # image-to-video checkpoints hand off as their text-to-video models do
        family = get_family(info.family)
        job = make_job(model=name, prompts=["a red circle on a blue background"], steps=4,
                       frames=min(info.max_frames, 9))
        engine = Engine(family, builtin_folder(name), name, torch.device("cpu"))
        live = engine.encode(job, job.samples())
        live = engine.denoise(live, 1)
        state = (live.latents.clone(), live.step, schedulers.capture(live.scheduler))

        def one_step(live=live, state=state, engine=engine) -> None:
            live.latents, live.step = state[0].clone(), state[1]
            schedulers.restore(live.scheduler, state[2], engine.device)
            engine.denoise(live, 2)

        step = timed(one_step)
        live.latents, live.step = state[0].clone(), state[1]
        schedulers.restore(live.scheduler, state[2], engine.device)
        rows.append((name, handoff(engine, live, job), step, len(wire.encode(engine.to_checkpoint(live)))))
    return rows


def full_size_rows() -> list[tuple[str, float, float, int]]:
    data = json.loads(DATA.read_text())["models"]
    rows = []
    for label, (key, latent_shape, cond_shapes, sampler) in FULL_SIZE.items():
        step = next(r["s_per_step"] for r in data[key]["rows"] if r["batch"] == 1)
        latents = torch.randn((1, *latent_shape))
        cond = {k: torch.randn(s).to(torch.bfloat16) for k, s in cond_shapes.items()}
        scheduler = schedulers.make(sampler, {"num_train_timesteps": 1000})
        scheduler.set_timesteps(30)
        generator = torch.Generator().manual_seed(0)

        def checkpoint(label=label, sampler=sampler, latents=latents, cond=cond, scheduler=scheduler,
                       generator=generator) -> bytes:
            return wire.encode(Checkpoint(
                model=label, family=label.split()[0], sampler=sampler, step=10, steps=30, guidance=5.0, width=0,
                height=0, frames=1, seeds=(0,), latents=to_raw(latents),
                conditioning={k: to_raw(v) for k, v in cond.items()}, scheduler_state=schedulers.capture(scheduler),
                rng_states=(generator.get_state().numpy().tobytes(),)))

        def once(sampler=sampler, checkpoint=checkpoint) -> None:
            back = wire.decode(checkpoint())
            resumed = schedulers.make(sampler, {"num_train_timesteps": 1000})
            resumed.set_timesteps(30)
            schedulers.restore(resumed, back.scheduler_state, torch.device("cpu"))
            torch.Generator().set_state(torch.frombuffer(bytearray(back.rng_states[0]), dtype=torch.uint8))
            from_raw(back.latents)
            for v in back.conditioning.values():
                from_raw(v)

        rows.append((label, timed(once), step, len(checkpoint())))
    return rows


def show(title: str, rows: list[tuple[str, float, float, int]], step_label: str) -> None:
    print(title)
    print(f"{'model':<26}{'checkpoint':>12}{'hand-off ms':>13}{step_label:>16}{'hand-off/step':>15}")
    for name, hand, step, size in rows:
        print(f"{name:<26}{size / 2**20:>10.2f}MB{hand * 1e3:>13.2f}{step * 1e3:>16.2f}{hand / step:>15.3f}")
    print()


def main() -> None:
    torch.set_num_threads(1)
    show("Tiny built-in models, all on this CPU (1 thread):", tiny_rows(), "step ms (CPU)")
    show("Full-size shapes, batch 1: hand-off on this CPU vs one step on an H100 (upper bound):",
         full_size_rows(), "step ms (H100)")


if __name__ == "__main__":
    main()
