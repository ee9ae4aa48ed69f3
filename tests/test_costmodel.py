"""The VRAM cost model against every measured H100 row, and the rules built on it.

tests/data/ holds copies of ../shared/data/gpu_*_h100.json so the check runs in a bare clone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from farm.contracts.errors import DoesNotFit
from farm.core import costmodel
from farm.core.costmodel import MODES, MemoryMode, Role, Shape

DATA = Path(__file__).parent / "data"
BACKBONES = json.loads((DATA / "gpu_backbones_h100.json").read_text())["models"]
STAGES = {r["name"]: r for r in json.loads((DATA / "gpu_stages_h100.json").read_text())["rows"]}

# Each measured backbone and the shape it was measured at.
BACKBONE_SHAPES = {
    "sd15_unet_512": Shape("sd15", 512, 512),
    "sdxl_unet_1024": Shape("sdxl", 1024, 1024),
    "ltxv_2b_768x512x121": Shape("ltxv", 768, 512, 121),
    "wan21_1.3b_832x480x81": Shape("wan21", 832, 480, 81),
    "hunyuanvideo15_8.3b_848x480x121": Shape("hunyuanvideo15", 848, 480, 121),
}
# Each measured stage row: shape, component, batch (samples), tiled. Rows of encoders that no
# profile uses as measured (T5-XXL at 512 tokens only lends its activations) are not listed.
STAGE_ROWS = {
    "sd_vae_decode_512_b1": (Shape("sd15", 512, 512), "vae", 1, False),
    "sd_vae_decode_512_b4": (Shape("sd15", 512, 512), "vae", 4, False),
    "sd_vae_decode_512_b8": (Shape("sd15", 512, 512), "vae", 8, False),
    "sdxl_vae_decode_1024_b1": (Shape("sdxl", 1024, 1024), "vae", 1, False),
    "sdxl_vae_decode_1024_b4": (Shape("sdxl", 1024, 1024), "vae", 4, False),
    "sdxl_vae_decode_1024_b4_tiled": (Shape("sdxl", 1024, 1024), "vae", 4, True),
    "ltxv_vae_decode_768x512x121": (Shape("ltxv", 768, 512, 121), "vae", 1, False),
    "ltxv_vae_decode_768x512x121_tiled": (Shape("ltxv", 768, 512, 121), "vae", 1, True),
    "wan_vae_decode_832x480x81": (Shape("wan21", 832, 480, 81), "vae", 1, False),
    "wan_vae_decode_832x480x81_tiled": (Shape("wan21", 832, 480, 81), "vae", 1, True),
    "hunyuanvideo15_vae_decode_848x480x121_tiled": (Shape("hunyuanvideo15", 848, 480, 121), "vae", 1, True),
    "t5xxl_encoder_seq128_b2": (Shape("ltxv", 768, 512, 121), "t5xxl", 1, False),
    "clip_l_text_b16": (Shape("sd15", 512, 512), "clip_l", 8, False),
}


def denoiser(shape: Shape) -> str:
    (comp,) = shape.profile.role(Role.DENOISER)
    return comp.name


def test_every_measured_backbone_has_a_profile() -> None:
    assert set(BACKBONES) == set(BACKBONE_SHAPES)


@pytest.mark.parametrize(
    ("key", "batch", "peak"),
    [(k, r["batch"], r["peak_gib"]) for k, m in BACKBONES.items() for r in m["rows"]],
)
def test_denoiser_peak_within_10_percent_of_each_measured_row(key: str, batch: int, peak: float) -> None:
    # The rows were measured with only the denoiser on the GPU: the offload mode's resident set.
    shape = BACKBONE_SHAPES[key]
    predicted = costmodel.component_peak_gib(shape, denoiser(shape), batch, MemoryMode.OFFLOAD)
    assert predicted == pytest.approx(peak, rel=0.10)


def test_denoiser_weights_match_the_measured_weights() -> None:
    for key, shape in BACKBONE_SHAPES.items():
        measured = BACKBONES[key]["weights_gib"]
        assert shape.profile.component(denoiser(shape)).weights_gib == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("name", sorted(STAGE_ROWS))
def test_stage_peak_within_10_percent_of_each_measured_row(name: str) -> None:
    """Rows were measured in bfloat16; a component that runs in its own dtype (Wan's VAE in fp32,
    as diffusers runs it) is predicted at that dtype, so its 16-bit row scales by the byte ratio."""
    shape, component, batch, tiled = STAGE_ROWS[name]
    mode = MemoryMode.OFFLOAD_TILED if tiled else MemoryMode.OFFLOAD
    predicted = costmodel.component_peak_gib(shape, component, batch, mode)
    fixed = shape.profile.component(component).dtype
    ratio = costmodel.DTYPE_BYTES[fixed][0] / 2 if fixed else 1.0
    assert predicted == pytest.approx(STAGES[name]["peak_gib"] * ratio, rel=0.10)


def test_hunyuan_vae_that_ran_out_of_80_gib_untiled_never_runs_untiled() -> None:
    assert STAGES["hunyuanvideo15_vae_decode_848x480x121"]["oom"]
    shape = Shape("hunyuanvideo15", 848, 480, 121)
    assert costmodel.component_peak_gib(shape, "vae", 1, MemoryMode.OFFLOAD) == math.inf
    fit = costmodel.best_fit(Shape("hunyuanvideo15", 480, 320, 33), 24, 1)
    assert fit is not None and fit.mode.tiled


def test_full_mode_keeps_every_weight_resident_and_offload_only_the_running_one() -> None:
    shape = Shape("sdxl", 1024, 1024)
    full = costmodel.component_peak_gib(shape, "unet", 2, MemoryMode.FULL)
    offload = costmodel.component_peak_gib(shape, "unet", 2, MemoryMode.OFFLOAD)
    others = shape.profile.weights_gib - shape.profile.component("unet").weights_gib
    assert full - offload == pytest.approx(others)


def test_tiling_bounds_the_decoder_but_never_raises_it() -> None:
    for scale in (1, 2, 4):
        shape = Shape("sdxl", 512 * scale, 512 * scale)
        tiled = costmodel.component_peak_gib(shape, "vae", 4, MemoryMode.OFFLOAD_TILED)
        untiled = costmodel.component_peak_gib(shape, "vae", 4, MemoryMode.OFFLOAD)
        assert tiled <= untiled + 0.6  # SDXL's untiled decode has a fixed 0.54 GiB the tiled one lacks
    big = costmodel.component_peak_gib(Shape("sdxl", 2048, 2048), "vae", 1, MemoryMode.OFFLOAD_TILED)
    ref = costmodel.component_peak_gib(Shape("sdxl", 1024, 1024), "vae", 1, MemoryMode.OFFLOAD_TILED)
    assert big == pytest.approx(ref)


def test_activations_grow_with_pixels_frames_and_batch_but_text_does_not() -> None:
    small = Shape("wan21", 832, 480, 41)
    assert costmodel.component_peak_gib(small, "transformer", 1, MemoryMode.OFFLOAD) < costmodel.component_peak_gib(
        Shape("wan21", 832, 480, 81), "transformer", 1, MemoryMode.OFFLOAD)
    assert costmodel.component_peak_gib(small, "umt5xxl", 1, MemoryMode.OFFLOAD) == pytest.approx(
        costmodel.component_peak_gib(Shape("wan21", 1664, 960, 81), "umt5xxl", 1, MemoryMode.OFFLOAD))
    peaks = [costmodel.shard_peak_gib(Shape("sd15", 512, 512), b) for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4


def test_dtype_scales_weights_and_activations() -> None:
    fp16 = costmodel.component_peak_gib(Shape("ltxv", 768, 512, 121), "transformer", 1, MemoryMode.OFFLOAD)
    fp32 = costmodel.component_peak_gib(Shape("ltxv", 768, 512, 121, dtype="fp32"), "transformer", 1,
                                        MemoryMode.OFFLOAD)
    fp8 = costmodel.component_peak_gib(Shape("ltxv", 768, 512, 121, dtype="fp8"), "transformer", 1, MemoryMode.OFFLOAD)
    assert fp32 == pytest.approx(2 * fp16)
    assert fp8 == pytest.approx(fp16 - 3.583 / 2)
    with pytest.raises(ValueError, match="dtype"):
        costmodel.shard_peak_gib(Shape("sd15", 512, 512, dtype="int3"), 1)


def test_best_fit_is_the_largest_batch_in_the_cheapest_mode_that_holds_it() -> None:
    shape = Shape("sd15", 512, 512)
    small = costmodel.best_fit(shape, 8, 4)
    assert small is not None and (small.mode, small.batch) == (MemoryMode.FULL, 4)
    big = costmodel.best_fit(shape, 8, 1000)
    assert big is not None and big.batch == max(costmodel.max_batch(shape, 8, m) for m in MODES)
    assert big.batch > costmodel.max_batch(shape, 8, MemoryMode.FULL) and big.mode.offload
    assert big.need_gib <= costmodel.usable_gib(8)
    assert costmodel.shard_peak_gib(shape, big.batch + 1, big.mode) > costmodel.usable_gib(8)


def test_budget_keeps_a_safety_margin() -> None:
    assert costmodel.usable_gib(24) < 24 * 0.95
    shape = Shape("sd15", 512, 512)
    assert costmodel.max_batch(shape, 24, correction=1.5) < costmodel.max_batch(shape, 24)


def test_a_job_that_fits_no_node_is_refused_naming_the_vram_it_needs() -> None:
    # Even streamed, HunyuanVideo-1.5's transformer holds 21.3 GiB of activations at 848x480x121.
    shape = Shape("hunyuanvideo15", 848, 480, 121)
    need = costmodel.min_vram_gib(shape)
    assert 21.3 < need < 36.8
    with pytest.raises(DoesNotFit, match=f"at least {need:.1f} GiB") as err:
        costmodel.check_fits(shape, [8, 12, 16])
    assert "largest node has 16.0 GiB" in str(err.value)
    assert costmodel.best_fit(shape, need, 1) is not None
    assert costmodel.best_fit(shape, need - 0.2, 1) is None
    costmodel.check_fits(Shape("ltxv", 768, 512, 121), [8, 12])  # fits the 12 GiB node with offload


def test_peak_correction_learns_up_quickly_and_down_only_a_little() -> None:
    assert costmodel.peak_correction([]) == 1.0
    assert costmodel.peak_correction([(4.0, 5.0), (4.0, 4.2)]) == pytest.approx(1.25)
    assert costmodel.peak_correction([(4.0, 2.0)]) == costmodel.MIN_CORRECTION
    assert costmodel.peak_correction([(4.0, 40.0)]) == costmodel.MAX_CORRECTION
    assert costmodel.peak_correction([(0.0, 3.0), (3.0, 0.0)]) == 1.0


@pytest.mark.parametrize(("shape", "model_offload_need"), [
    (Shape("flux", 1024, 1024), 26.3),  # Flux.1-dev at its default size
    (Shape("hunyuanvideo15", 832, 480, 33), 24.7),  # HunyuanVideo-1.5 at 480p, 33 frames
])
def test_group_offload_admits_flux_and_hunyuan_on_16_and_24_gib_cards(shape: Shape, model_offload_need: float) -> None:
    """Without group offload neither fits a 24 GiB card (the figures of issue 14); streamed, both fit
    16 GiB, in group offload mode (the cheapest in time that holds them)."""
    offload_only = min(costmodel.shard_peak_gib(shape, 1, m) for m in (MemoryMode.OFFLOAD, MemoryMode.OFFLOAD_TILED))
    assert (offload_only + costmodel.RESERVE_GIB) / (1 - costmodel.MARGIN) == pytest.approx(model_offload_need, abs=0.3)
    for vram in (16, 24):
        fit = costmodel.best_fit(shape, vram, 1)
        assert fit is not None and fit.mode.streamed, vram
        costmodel.check_fits(shape, [vram])


def test_group_offload_is_tried_after_the_faster_modes_and_streams_only_two_blocks() -> None:
    assert MODES.index(MemoryMode.GROUP_OFFLOAD) > MODES.index(MemoryMode.OFFLOAD_TILED)
    shape = Shape("sd15", 512, 512)
    assert costmodel.best_fit(shape, 8, 4).mode is MemoryMode.FULL  # never streamed when it fits otherwise
    flux = Shape("flux", 1024, 1024)
    streamed = costmodel.component_peak_gib(flux, "transformer", 1, MemoryMode.GROUP_OFFLOAD)
    offload = costmodel.component_peak_gib(flux, "transformer", 1, MemoryMode.OFFLOAD)
    transformer = flux.profile.component("transformer")
    assert offload - streamed == pytest.approx(transformer.weights_gib - transformer.streamed_gib())
    assert transformer.streamed_gib() < 0.15 * transformer.weights_gib
    # A component without repeated blocks (SD's UNet) onloads whole, as under model offload.
    sd_unet = costmodel.component_peak_gib(shape, "unet", 1, MemoryMode.GROUP_OFFLOAD)
    assert sd_unet == costmodel.component_peak_gib(shape, "unet", 1, MemoryMode.OFFLOAD)
