"""Checkpoints move between nodes of different dtypes and devices: a shard handed from a float32
node to a bfloat16 node and back, at every family's segment boundary, finishes within a stated
tolerance of the uncut float32 run (bf16 keeps 8 bits of mantissa: a few steps in it move the
latents by about 1% of their spread). Also the GPU-path rules that hold on a CPU: CPU generators,
scheduler tensors back on the side they were saved from, offload hooks released after each stage,
an evicted engine freed, tiling switched without a reload, safetensors variants preferred, and the
per-family dtype policy."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from segment_harness import Case, job_for

from farm.contracts.errors import CheckpointError
from farm.jobs.catalog import get_model
from farm.pipelines import precision, schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.pipelines.loader import variant_for
from farm.wire import checkpoint_codec as wire

MODELS = {"sd15": "demo-tiny", "sdxl": "tiny-sdxl", "sdxl_refiner": "tiny-sdxl-refiner", "flux": "tiny-flux",
          "ltxv": "tiny-ltx", "wan21": "tiny-wan21", "wan22": "tiny-wan22", "hunyuanvideo15": "tiny-hunyuan15"}
VIDEO = {"ltxv", "wan21", "wan22", "hunyuanvideo15"}
# Relative L2 error of the handed-over run's final latents against the uncut float32 run.
TOLERANCE = 0.05


def case(family: str) -> Case:
    fields = {"model": MODELS[family], "width": 32, "height": 32, "steps": 4}
    if family in VIDEO:
        fields["frames"] = 9
    return Case(family, get_model(MODELS[family]).default_sampler, fields)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


def folder_for(family: str, folders: dict[str, Path], base: Path) -> Path:
    if family not in folders:
        path = base / f"portable-{family}"
        get_family(family).build_tiny().save_pretrained(path)
        folders[family] = path
    return folders[family]


def engine(family: str, folder: Path, dtype: torch.dtype) -> Engine:
    return Engine(get_family(family), folder, "test", torch.device("cpu"), dtype=dtype)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(MODELS))
def test_fp32_to_bf16_and_back_stays_within_tolerance(
        family: str, folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Step 1 on a float32 node, step 2 on a bfloat16 node, the rest on a float32 node again; the
    bfloat16 node then decodes the result (its VAE path works too)."""
    folder = folder_for(family, folders, tmp_path_factory.getbasetemp())
    job = job_for(case(family))
    ends = schedulers.whole_step_ends(job.sampler, job.steps)
    fp32, bf16 = engine(family, folder, torch.float32), engine(family, folder, torch.bfloat16)
    uncut = fp32.denoise(fp32.encode(job, job.samples()), ends[-1]).latents
    live = fp32.denoise(fp32.encode(job, job.samples()), ends[1])
    on_bf16 = bf16.from_checkpoint(wire.decode(wire.encode(fp32.to_checkpoint(live))), job)
    assert on_bf16.latents.dtype == get_family(family).latent_dtype(torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in on_bf16.cond.values() if t.is_floating_point())
    on_bf16 = bf16.denoise(on_bf16, ends[2])
    back = fp32.from_checkpoint(wire.decode(wire.encode(bf16.to_checkpoint(on_bf16))), job)
    assert back.latents.dtype == torch.float32
    done = fp32.denoise(back, ends[-1])
    assert torch.isfinite(done.latents).all()
    assert relative_error(done.latents, uncut) < TOLERANCE
    assert len(bf16.decode(bf16.from_checkpoint(fp32.to_checkpoint(done), job))) == len(job.samples())


def test_noise_comes_from_cpu_generators_and_a_cuda_state_is_refused(engines) -> None:
    e = engines("sd15")
    job = job_for(Case("sd15", "euler_a", {"model": "demo-tiny", "width": 32, "height": 32}))
    live = e.first.encode(job, job.samples())
    assert all(g.device.type == "cpu" for g in live.generators)
    cp = e.first.to_checkpoint(live)
    assert {len(s) for s in cp.rng_states} == {5056}  # a CPU generator's state (a CUDA one is 16 bytes)
    bad = wire.decode(wire.encode(cp))
    object.__setattr__(bad, "rng_states", tuple(b"\0" * 16 for _ in bad.rng_states))
    with pytest.raises(CheckpointError, match="RNG state"):
        e.middle.from_checkpoint(bad, job)


def test_scheduler_tensors_go_back_to_the_side_they_were_saved_from() -> None:
    scheduler = schedulers.make("dpmpp_2m", {"num_train_timesteps": 1000})
    scheduler.set_timesteps(10)
    state = schedulers.capture(scheduler, torch.device("cpu"))
    assert state[schedulers.ON_CPU] == ["sigmas"]  # a CPU node names diffusers' CPU-side attributes
    # As a GPU node saves it: sigmas on the CPU, timesteps on the model's device ("meta" stands in).
    fresh = schedulers.make("dpmpp_2m", {"num_train_timesteps": 1000})
    schedulers.restore(fresh, state, torch.device("meta"))
    assert fresh.sigmas.device.type == "cpu" and fresh.timesteps.device.type == "meta"
    state[schedulers.ON_CPU] = ["sigmas", "timesteps"]
    schedulers.restore(fresh, state, torch.device("meta"))
    assert fresh.timesteps.device.type == "cpu"
    # Multistep history takes the receiving node's latent dtype; schedules keep theirs.
    scheduler.model_outputs = [None, torch.ones(1, 4, 2, 2)]
    fresh = schedulers.make("dpmpp_2m", {"num_train_timesteps": 1000})
    schedulers.restore(fresh, schedulers.capture(scheduler), torch.device("cpu"), torch.bfloat16)
    assert fresh.model_outputs[1].dtype == torch.bfloat16 and fresh.sigmas.dtype == torch.float32


def test_dtype_policy_per_family_and_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.policy("wan21", cpu).describe() == "fp32"
    assert precision.policy("wan21", cpu, torch.bfloat16).describe() == "bf16 (vae fp32)"
    wan22 = precision.policy("wan22", cpu, torch.bfloat16)
    assert wan22.load_arg() == {"default": torch.bfloat16, "vae": torch.float32}
    assert precision.policy("sdxl", cpu, torch.float16).describe() == "fp16"  # the VAE upcasts itself to decode
    for family in ("flux", "ltxv", "hunyuanvideo15"):
        assert precision.policy(family, cpu, torch.bfloat16).describe() == "bf16"
    if not torch.cuda.is_available():
        return
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert precision.policy("flux", cuda).dtype == want and precision.policy("sd15", cuda).dtype == torch.float16


def test_a_bf16_wan_engine_keeps_its_vae_in_fp32(engines) -> None:
    e = engines("wan21")
    bf16 = Engine(get_family("wan21"), e.folder, "test", torch.device("cpu"), dtype=torch.bfloat16)
    assert bf16.pipe("decode").vae.dtype == torch.float32
    assert bf16.pipe("denoise").transformer.dtype == torch.bfloat16
    assert bf16.precision.describe() == "bf16 (vae fp32)"


def test_tiling_switches_without_reloading_and_close_frees_the_model(engines) -> None:
    e = engines("sd15")
    engine = Engine(get_family("sd15"), e.folder, "test", torch.device("cpu"))
    vae = engine.pipe("decode").vae
    loads = engine.loads
    engine.use("full_tiled")
    assert vae.use_tiling and engine.loads == loads and engine.mode_used == "full_tiled"
    engine.use("offload")  # no GPU: the placement stays full, tiling goes off
    assert not vae.use_tiling and engine.mode_used == "full" and engine.loads == loads
    ref = weakref.ref(vae)
    del vae
    engine.close()
    gc.collect()
    assert ref() is None and engine.pipes == {}


def test_model_offload_hooks_release_after_each_stage_and_are_removed_on_close(engines) -> None:
    """Model CPU offload's hooks, applied on the CPU itself (no GPU here): a stage's release puts the
    hooks back in their offloaded state, and close removes them."""
    e = engines("sd15")
    engine = Engine(get_family("sd15"), e.folder, "test", torch.device("cpu"))
    pipe = engine.pipe("denoise")
    pipe.enable_model_cpu_offload(device=torch.device("cpu"))
    released = []
    pipe.maybe_free_model_hooks = lambda: released.append(True)  # the call diffusers makes after __call__
    job = job_for(Case("sd15", "euler", {"model": "demo-tiny", "width": 32, "height": 32}))
    engine.denoise(engine.encode(job, job.samples()), 1)
    assert released == [True]
    assert hasattr(pipe.unet, "_hf_hook")
    engine.close()
    assert not hasattr(pipe.unet, "_hf_hook")


def test_half_precision_variants_are_preferred_when_every_component_has_one(tmp_path: Path) -> None:
    pipe = get_family("sd15").build_tiny()
    pipe.save_pretrained(tmp_path)
    pipe.to(torch.float16).save_pretrained(tmp_path, variant="fp16")
    assert variant_for(tmp_path, {"unet", "vae", "text_encoder", "tokenizer"}, torch.float16) == "fp16"
    assert variant_for(tmp_path, {"unet"}, torch.bfloat16) is None
    assert variant_for(tmp_path, {"unet"}, torch.float32) is None
    (tmp_path / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert variant_for(tmp_path, {"unet", "vae"}, torch.float16) is None
    engine = Engine(get_family("sd15"), tmp_path, "test", torch.device("cpu"), dtype=torch.float16)
    assert engine.pipe("denoise").unet.dtype == torch.float16
