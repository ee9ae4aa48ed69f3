"""Sizes from the files: real models' full-size configs (farm/pipelines/fullsize.py, written from the
published model cards) are instantiated on the meta device and written as diffusers folders whose
safetensors files hold a real header and no data (sparse files: no weights, no download). The sizes
the farm reads from those headers, and the cost model's weights built from them, match the published
parameter counts within 1%; Wan 2.1 14B is no longer costed as the 1.3B."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from farm.core import costmodel
from farm.core.costmodel import MemoryMode, Shape
from farm.jobs import sources
from farm.pipelines import fullsize

# Published parameter counts in billions: model cards, and ../shared/data/gpu_backbones_h100.json
# (params_b of the measured denoisers).
PUBLISHED = {
    "sd15": {"text_encoder": 0.1231, "unet": 0.86, "vae": 0.0837},
    "sdxl": {"text_encoder": 0.1231, "text_encoder_2": 0.6947, "unet": 2.567, "vae": 0.0837},
    "flux1-dev": {"text_encoder_2": 4.762, "transformer": 11.90},
    "ltx-video-2b": {"text_encoder": 4.762, "transformer": 1.923},
    "wan2.1-1.3b": {"text_encoder": 5.68, "transformer": 1.419},
    "wan2.1-14b": {"transformer": 14.29},
    "wan2.2-a14b": {"transformer": 14.29, "transformer_2": 14.29},
    "hunyuanvideo1.5-480p": {"text_encoder": 7.07, "transformer": 8.327},
}
CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "flux1-dev": "FluxPipeline",
           "ltx-video-2b": "LTXPipeline", "wan2.1-1.3b": "WanPipeline", "wan2.1-14b": "WanPipeline",
           "wan2.2-a14b": "WanPipeline", "hunyuanvideo1.5-480p": "HunyuanVideo15Pipeline"}
ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def write_header_only(module: torch.nn.Module, path: Path, dtype: torch.dtype) -> None:
    """A safetensors file of `module`'s state dict in `dtype` (tied copies dropped, as
    save_pretrained drops them), with a real header and a sparse, unwritten data section."""
    tied = set(getattr(module, "_tied_weights_keys", None) or ())
    table, offset = {}, 0
    for name, tensor in module.state_dict().items():
        if name in tied:
            continue
        dt = dtype if tensor.is_floating_point() else tensor.dtype
        size = tensor.numel() * dt.itemsize
        table[name] = {"dtype": ST_DTYPES[dt], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(table).encode()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + offset)


def write_folder(name: str, folder: Path) -> None:
    family, builder = fullsize.MODELS[name]
    index = {"_class_name": CLASSES[name]}
    for part, module in fullsize.on_meta(builder).items():
        (folder / part).mkdir(parents=True)
        config = dict(module.config) if hasattr(module.config, "keys") else module.config.to_dict()
        (folder / part / "config.json").write_text(json.dumps(config, default=str))
        diffusers_part = part in ("unet", "vae", "transformer", "transformer_2", "refiner")
        weights = "diffusion_pytorch_model" if diffusers_part else "model"
        write_header_only(module, folder / part / f"{weights}.safetensors", torch.bfloat16)
        index[part] = ["diffusers", type(module).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fullsize")
    out = {}
    for name in PUBLISHED:
        write_folder(name, base / name)
        out[name] = base / name
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_sizes_read_from_headers_match_the_published_counts(name: str, folders: dict[str, Path]) -> None:
    sizes = sources.model_sizes(folders[name])
    for part, billions in PUBLISHED[name].items():
        assert sizes[part].params / 1e9 == pytest.approx(billions, rel=0.01), part
        assert sizes[part].file_bytes == 2 * sizes[part].params  # written in bf16
    info = sources.external_model(str(folders[name]))
    profile = costmodel.PROFILES[info.profile]
    names = sources.COST_NAMES[info.family]
    for part, size in sizes.items():
        cost_name = names.get(part, part)
        assert profile.component(cost_name).weights_gib == pytest.approx(size.params * 2 / 2**30), part


@pytest.mark.slow
def test_a_14b_wan_is_costed_as_14b_and_wan22_as_two_experts(folders: dict[str, Path]) -> None:
    small, big, two = (sources.external_model(str(folders[n])) for n in ("wan2.1-1.3b", "wan2.1-14b", "wan2.2-a14b"))
    assert (small.family, big.family, two.family) == ("wan21", "wan21", "wan22")
    shape = lambda info: Shape(info.profile, 832, 480, 81)  # noqa: E731
    assert costmodel.PROFILES[big.profile].component("transformer").weights_gib == pytest.approx(26.6, rel=0.01)
    assert costmodel.min_vram_gib(shape(big)) > costmodel.min_vram_gib(shape(small))
    offload = costmodel.component_peak_gib(shape(big), "transformer", 1, MemoryMode.OFFLOAD)
    assert offload > 26.6 + 2.9  # the weights plus more than the 1.3B's activations (5120 wide, not 1536)
    assert {c.name for c in costmodel.PROFILES[two.profile].role(costmodel.Role.DENOISER)} == {"transformer",
                                                                                                  "transformer_2"}
    assert costmodel.PROFILES[big.profile].compute_scale == pytest.approx(14.29 / 1.419, rel=0.02)
    # Every model still gets the family's documented guidance, not 7.5.
    assert (small.default_guidance, two.default_guidance) == (5.0, 4.0)
    flux = sources.external_model(str(folders["flux1-dev"]))
    ltx = sources.external_model(str(folders["ltx-video-2b"]))
    assert (flux.default_guidance, ltx.default_guidance) == (3.5, 3.0)
