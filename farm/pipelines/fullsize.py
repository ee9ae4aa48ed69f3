"""Real models' architectures at full size, written in code from their published configs (no
download): for sizing (on the meta device), for CPU tests of the real code paths, and for
bench/gpu_check.py (random weights on a GPU).

Each builder returns a model's components by pipeline name. Text encoders and tokenizers a test
cannot afford (umT5-XXL, Qwen2.5-VL-7B) have `small_text=True` stand-ins with the real output width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLHunyuanVideo15,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    FluxTransformer2DModel,
    HunyuanVideo15Transformer3DModel,
    LTXVideoTransformer3DModel,
    UNet2DConditionModel,
    WanTransformer3DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

Builder = Callable[[], dict[str, torch.nn.Module]]


def clip_l() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=768))


def clip_g() -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1280))


def t5_xxl() -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32))


def umt5_xxl(small: bool = False) -> UMT5EncoderModel:
    """umT5-XXL's encoder; `small`: two layers and a 1k vocabulary, the real 4096-wide output."""
    return UMT5EncoderModel(UMT5Config(
        vocab_size=1024 if small else 256384, d_model=4096, d_kv=64, d_ff=1024 if small else 10240,
        num_layers=2 if small else 24, num_heads=64, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32, is_encoder_decoder=False, use_cache=False))


def qwen25vl_7b() -> Qwen2_5_VLTextModel:
    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}))


def byt5_small() -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6,
                                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32))


def sd_vae(latent_channels: int = 4, quant: bool = True) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=2,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=quant, use_post_quant_conv=quant)


def sd15() -> dict[str, torch.nn.Module]:
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    return {"text_encoder": clip_l(), "unet": unet, "vae": sd_vae()}


def sdxl_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def sdxl_refiner_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=128, block_out_channels=(384, 768, 1536, 1536), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24), cross_attention_dim=1280,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2560)


def sdxl() -> dict[str, torch.nn.Module]:
    return {"text_encoder": clip_l(), "text_encoder_2": clip_g(), "unet": sdxl_unet(), "vae": sd_vae()}


def sdxl_refined() -> dict[str, torch.nn.Module]:
    return {**sdxl(), "refiner": sdxl_refiner_unet()}


def flux_dev() -> dict[str, torch.nn.Module]:
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    return {"text_encoder": clip_l(), "text_encoder_2": t5_xxl(), "transformer": transformer,
            "vae": sd_vae(latent_channels=16, quant=False)}


def ltx_2b() -> dict[str, torch.nn.Module]:
    return {"text_encoder": t5_xxl(), "transformer": LTXVideoTransformer3DModel(), "vae": AutoencoderKLLTXVideo()}


def wan_transformer(big: bool) -> WanTransformer3DModel:
    heads, ffn, layers = (40, 13824, 40) if big else (12, 8960, 30)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128,
                                 in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn,
                                 num_layers=layers,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)


def wan21_1_3b(small_text: bool = False) -> dict[str, torch.nn.Module]:
    return {"text_encoder": umt5_xxl(small_text), "transformer": wan_transformer(big=False), "vae": AutoencoderKLWan()}


def wan21_14b(small_text: bool = False) -> dict[str, torch.nn.Module]:
    return {"text_encoder": umt5_xxl(small_text), "transformer": wan_transformer(big=True), "vae": AutoencoderKLWan()}


def wan22_a14b(small_text: bool = False) -> dict[str, torch.nn.Module]:
    return {**wan21_14b(small_text), "transformer_2": wan_transformer(big=True)}


def hunyuan15_480p() -> dict[str, torch.nn.Module]:
    transformer = HunyuanVideo15Transformer3DModel(task_type="t2v")
    return {"text_encoder": qwen25vl_7b(), "text_encoder_2": byt5_small(), "transformer": transformer,
            "vae": AutoencoderKLHunyuanVideo15()}


# name -> (family, builder)
MODELS: dict[str, tuple[str, Builder]] = {
    "sd15": ("sd15", sd15),
    "sdxl": ("sdxl", sdxl),
    "sdxl-refiner": ("sdxl_refiner", sdxl_refined),
    "flux1-dev": ("flux", flux_dev),
    "ltx-video-2b": ("ltxv", ltx_2b),
    "wan2.1-1.3b": ("wan21", wan21_1_3b),
    "wan2.1-14b": ("wan21", wan21_14b),
    "wan2.2-a14b": ("wan22", wan22_a14b),
    "hunyuanvideo1.5-480p": ("hunyuanvideo15", hunyuan15_480p),
}


def on_meta(builder: Builder) -> dict[str, torch.nn.Module]:
    """Components with shapes and no storage (accelerate's `init_empty_weights`): sizes for free."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return builder()
