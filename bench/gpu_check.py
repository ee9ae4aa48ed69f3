"""One command to prove the GPU path on a GPU: no downloads, no Ray.

For each family it builds the full-size denoiser, text encoders and VAE (farm/pipelines/fullsize.py)
with random weights on the GPU, in the family's dtype, and runs one short job through the farm's
engine: encode, two denoising segments handed over through a msgpack checkpoint, decode. It does so
in the memory mode the planner picks for this card's budget and for 12, 16 and 24 GiB budgets, then
runs the same job as one plain diffusers pipeline call in the same mode, and prints per family and
budget: the cost model's predicted peak and the measured peak (torch.cuda.max_memory_allocated),
seconds per step, hand-off seconds, and the farm engine's time against the plain call's (a ratio).

Run:  .venv/bin/python bench/gpu_check.py [--models sd15 flux1-dev ...] [--steps 4]
      .venv/bin/python bench/gpu_check.py --dry-run   (tiny models on the CPU: checks the plumbing)
Without a GPU (and without --dry-run) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from farm.core import costmodel
from farm.core.costmodel import Shape
from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job
from farm.jobs.sources import LIMITS
from farm.pipelines import fullsize, precision, schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.wire import checkpoint_codec as wire

DEFAULT_MODELS = ("sd15", "sdxl", "flux1-dev", "ltx-video-2b", "wan2.1-1.3b", "hunyuanvideo1.5-480p")
BUDGETS = (12.0, 16.0, 24.0)
# A short job per family: its default size (videos at 17 frames), costed at that size.
FRAMES = {"ltxv": 17, "wan21": 17, "wan22": 17, "hunyuanvideo15": 17}
TINY = {"sd15": "demo-tiny", "sdxl": "tiny-sdxl", "sdxl_refiner": "tiny-sdxl-refiner", "flux": "tiny-flux",
        "ltxv": "tiny-ltx", "wan21": "tiny-wan21", "wan22": "tiny-wan22", "hunyuanvideo15": "tiny-hunyuan15"}


@dataclass
class Row:
    model: str
    budget: float
    mode: str
    predicted_gib: float
    peak_gib: float
    step_s: float
    handoff_s: float
    farm_s: float
    plain_s: float

    def line(self) -> str:
        return (f"{self.model:<22}{self.budget:>7.0f}{self.mode:>26}{self.predicted_gib:>10.2f}{self.peak_gib:>10.2f}"
                f"{self.step_s:>9.3f}{self.handoff_s:>10.3f}{self.farm_s:>9.2f}{self.plain_s:>9.2f}"
                f"{self.farm_s / self.plain_s:>7.2f}")


HEADER = (f"{'model':<22}{'budget':>7}{'mode':>26}{'pred GiB':>10}{'peak GiB':>10}{'s/step':>9}{'handoff s':>10}"
          f"{'farm s':>9}{'plain s':>9}{'ratio':>7}")


def skeleton(family: str, components: dict[str, torch.nn.Module], folder: Path) -> None:
    """A diffusers folder with the tiny model's tokenizers and scheduler and the full-size components'
    configs, no weights: the engine reads configs from it and gets the modules preloaded."""
    get_family(family).build_tiny().save_pretrained(folder)
    for part, module in components.items():
        for weights in (folder / part).glob("*.safetensors*"):
            weights.unlink()
        if hasattr(module, "save_config"):
            module.save_config(folder / part)
        else:
            module.config.save_pretrained(folder / part)


def build(name: str, family: str, device: torch.device) -> dict[str, torch.nn.Module]:
    """Full-size components with random weights, made on `device` in the family's dtype (Wan's
    text encoder is umT5-XXL; everything is built on the GPU, which initialises in seconds)."""
    policy = precision.policy(family, device)
    default = torch.get_default_dtype()
    torch.set_default_dtype(policy.dtype)
    try:
        with torch.device(device):
            components = fullsize.MODELS[name][1]()
    finally:
        torch.set_default_dtype(default)
    return {part: m.to(policy.of(part)).eval() for part, m in components.items()}


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - began


def run_once(name: str, family: str, folder: Path, components: dict, device: torch.device, budget: float,
             steps: int, tiny: bool) -> Row | None:
    # The job names the family's built-in model (validation, frame rate); the engine runs `folder`.
    limits, builtin = LIMITS[family], get_model(TINY[family])
    size = 32 if tiny else limits.default_size
    frames = FRAMES.get(family, 1)
    job = replace(make_job(model=builtin.name, prompts=["a red fox in the snow"], steps=steps, frames=frames,
                           sampler=limits.sampler), width=size, height=size, guidance=limits.guidance)
    fit = costmodel.best_fit(Shape(builtin.profile, size, size, frames), budget, 1)
    if fit is None:
        return None
    engine = Engine(get_family(family), folder, builtin.name, device, memory_mode=str(fit.mode), preloaded=components)
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        total = schedulers.evaluations(job.sampler, job.steps)
        cut = total // 2

        def farm() -> float:
            live = engine.encode(job, job.samples())
            live = engine.denoise(live, cut)
            (resumed, handoff) = timed(lambda: engine.from_checkpoint(
                wire.decode(wire.encode(engine.to_checkpoint(live))), job), device)
            _, denoise = timed(lambda: engine.denoise(resumed, total), device)
            engine.decode(resumed)
            return handoff, denoise / (total - cut)

        (handoff, step), farm_s = timed(farm, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        _, plain_s = timed(lambda: engine.plain(job, job.samples()), device)
        mode = str(fit.mode) if engine.mode_used == fit.mode else f"{fit.mode}->{engine.mode_used}"
        return Row(name, budget, mode, fit.need_gib, peak, step, handoff, farm_s, plain_s)
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), choices=sorted(fullsize.MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: the plumbing, not the GPU")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no NVIDIA GPU visible to torch (torch.cuda.is_available() is False); nothing to check.")
        return 0
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    card = BUDGETS[-1] if args.dry_run else torch.cuda.get_device_properties(device).total_memory / 2**30
    device_name = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(device)
    print(f"device: {device_name}, torch {torch.__version__}; mode: planned (-> used, where they differ)")
    print(HEADER)
    rows = []
    for name in args.models:
        family = fullsize.MODELS[name][0]
        tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        try:
            if args.dry_run:
                pipe = get_family(family).build_tiny()
                components = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
            else:
                components = build(name, family, device)
            skeleton(family, components, tmp / name)
            for budget in (card, *BUDGETS):
                row = run_once(name, family, tmp / name, components, device, budget, args.steps, args.dry_run)
                if row is None:
                    print(f"{name:<22}{budget:>7.0f}  does not fit in any memory mode")
                    continue
                rows.append(row)
                print(row.line(), flush=True)
        finally:
            components = None
            shutil.rmtree(tmp, ignore_errors=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
