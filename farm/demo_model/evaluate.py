"""How well demo-shapes draws what it is asked: renders a fixed set of prompts and reads the images back.

    python -m farm.demo_model.evaluate                  # plain diffusers pipeline calls, one process
    python -m farm.demo_model.evaluate --farm           # through the embedded farm (Ray, simulated nodes)
    python -m farm.demo_model.evaluate --model DIR      # another folder in diffusers format
    python -m farm.demo_model.evaluate --lora demo-shapes-outline:1   # with a LoRA style (plain or --farm)

Prints one line per sample (prompt, what the image shows, ok) and the share of samples whose shape
colour and background colour are right (the shape kind is reported, not required), and how many
shapes are drawn as outlines rather than filled (the `demo-shapes-outline` LoRA's style).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farm.demo_model.judge import Reading, parse_prompt, read_image
from farm.jobs.loras import find_lora, parse_lora_flag

# A fixed set of prompts: every shape, every colour as shape and as background, the demo's four;
# neighbours differ in both colours, so a farm that hands one sample another's prompt gets caught.
CHECK_PROMPTS: tuple[str, ...] = (
    "a red circle on a blue background",
    "a yellow square on a green background",
    "a white triangle on a black background",
    "a blue circle on a yellow background",
    "a green triangle on a white background",
    "a black square on an orange background",
    "a purple circle on a white background",
    "an orange triangle on a purple background",
    "a white square on a red background",
    "a red triangle on a yellow background",
    "a green circle on a black background",
    "a yellow triangle on a blue background",
    "a blue square on a white background",
    "a black circle on a green background",
    "an orange square on a blue background",
    "a purple triangle on a yellow background",
    "a yellow circle on a purple background",
    "a white circle on a green background",
    "a blue triangle on an orange background",
    "a green square on a red background",
)
# The demo's sampler, few enough steps that a test of the whole farm runs in seconds on a CPU, and the
# guidance this model draws cleanest shapes at (7.5 also gets the colours right).
CHECK_STEPS = 12
CHECK_SAMPLER = "euler_a"
CHECK_GUIDANCE = 3.0


@dataclass(frozen=True)
class Verdict:
    prompt: str
    seed: int
    reading: Reading
    ok: bool
    shape_ok: bool


def judge(prompts: Sequence[str], seeds: Sequence[int], images: Sequence[np.ndarray]) -> list[Verdict]:
    out = []
    for prompt, seed, image in zip(prompts, seeds, images, strict=True):
        shape, colour, background = parse_prompt(prompt)
        reading = read_image(image)
        out.append(Verdict(prompt, seed, reading, reading.matches(shape, colour, background),
                           reading.matches(shape, colour, background, check_shape=True)))
    return out


def accuracy(verdicts: Sequence[Verdict]) -> float:
    return sum(v.ok for v in verdicts) / len(verdicts)


def outlines(verdicts: Sequence[Verdict]) -> int:
    """How many samples show their shape as an outline (the rest are filled, or show no shape)."""
    return sum(v.reading.outlined for v in verdicts)


def report(verdicts: Sequence[Verdict]) -> str:
    lines = [
        f"{'ok' if v.ok else 'WRONG':5} {v.prompt:45} seed {v.seed:<3} shows {v.reading.colour} "
        f"{v.reading.shape}{' outline' if v.reading.outlined else ''} on {v.reading.background}"
        for v in verdicts
    ]
    n = len(verdicts)
    lines.append(f"colours right: {sum(v.ok for v in verdicts)}/{n} ({accuracy(verdicts):.0%}); "
                 f"colours and shape right: {sum(v.shape_ok for v in verdicts)}/{n}; "
                 f"outlines: {outlines(verdicts)}/{n}")
    return "\n".join(lines)


def render_plain(model: str | Path, prompts: Sequence[str], seeds: Sequence[int], steps: int = CHECK_STEPS,
                 sampler: str = CHECK_SAMPLER, guidance: float = CHECK_GUIDANCE, lora: Path | None = None,
                 lora_weight: float = 1.0) -> list[np.ndarray]:
    """Plain diffusers pipeline calls, one per seed (all prompts batched), in the farm's sample order;
    with `lora`, that adapter file loaded the way diffusers documents (`load_lora_weights`)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from farm.pipelines import schedulers

    pipe = StableDiffusionPipeline.from_pretrained(str(model))  # float32, as saved
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="style")
        pipe.set_adapters(["style"], adapter_weights=[lora_weight])
    pipe.scheduler = schedulers.make(sampler, pipe.scheduler.config)
    by_seed = {}
    for seed in seeds:
        out = pipe(
            prompt=list(prompts),
            negative_prompt=[""] * len(prompts) if guidance > 1 else None,
            generator=[torch.Generator().manual_seed(seed) for _ in prompts],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=64,
            width=64,
            output_type="np",
        )
        by_seed[seed] = [(a * 255).round().astype(np.uint8) for a in out.images]
    return [by_seed[seed][i] for i in range(len(prompts)) for seed in seeds]


def samples_of(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    """Prompts and seeds in the farm's sample order (prompt-major)."""
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.demo_model.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a diffusers folder (default: the bundled demo-shapes)")
    parser.add_argument("--farm", action="store_true", help="render through the embedded farm of simulated nodes")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=CHECK_STEPS)
    parser.add_argument("--sampler", default=CHECK_SAMPLER)
    parser.add_argument("--guidance", type=float, default=CHECK_GUIDANCE)
    parser.add_argument("--out", type=Path, default=None, help="also save the images here")
    parser.add_argument("--lora", default=None, metavar="NAME:WEIGHT", help="with this LoRA adapter (e.g. "
                        "demo-shapes-outline:1)")
    args = parser.parse_args(argv)
    lora = None
    if args.lora:
        lora = parse_lora_flag(args.lora)
        if find_lora(str(lora["name"])) is None:
            parser.error(f"no adapter {lora['name']!r} on this PC")
    seeds = list(range(args.seeds))
    prompts, sample_seeds = samples_of(CHECK_PROMPTS, seeds)
    if args.farm:
        if args.model:
            parser.error("--farm renders the catalog's demo-shapes; leave out --model")
        images = render_farm(args.seeds, args.steps, args.sampler, args.guidance, lora)
    else:
        from farm.pipelines.loader import builtin_folder

        model = args.model or builtin_folder("demo-shapes")
        adapter = find_lora(str(lora["name"])).path if lora else None
        images = render_plain(model, CHECK_PROMPTS, seeds, args.steps, args.sampler, args.guidance, adapter,
                              float(lora["weight"]) if lora else 1.0)
    verdicts = judge(prompts, sample_seeds, images)
    print(report(verdicts))
    if args.out:
        from PIL import Image

        args.out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(args.out / f"{i:03d}.png")
    return 0


def render_farm(seeds: int, steps: int, sampler: str, guidance: float,
                lora: dict[str, object] | None = None) -> list[np.ndarray]:
    from PIL import Image

    from farm.cli.embedded import render_embedded
    from farm.jobs.jobspec import make_job
    from node.simulated import simulated_nodes

    job = make_job(model="demo-shapes", prompts=list(CHECK_PROMPTS), seeds=seeds, steps=steps, sampler=sampler,
                   guidance=guidance, loras=[lora] if lora else None)
    with tempfile.TemporaryDirectory() as tmp:
        render_embedded(job, simulated_nodes(), Path(tmp))
        return [np.asarray(Image.open(p).convert("RGB")) for p in sorted_outputs(list(Path(tmp).rglob("*.png")))]


def sorted_outputs(paths: Sequence[Path]) -> list[Path]:
    """The farm's PNGs in sample order (files are named `<sample>-seed<seed>.png`)."""
    return sorted(paths, key=lambda p: int(p.name.split("-", 1)[0]))


if __name__ == "__main__":
    sys.exit(main())
