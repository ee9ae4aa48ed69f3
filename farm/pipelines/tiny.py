"""Tiny pipelines built in code from configs, so the demo and the tests never download weights.

The demo model has the SD 1.5 architecture (CLIP text encoder, conditional UNet, KL VAE) at a
fraction of the width, with weights drawn from a fixed seed: every node that builds it gets the
same bytes. It is saved once to a folder and every node loads it with `from_pretrained`, the same
call that loads a real model from a Hugging Face id or a local folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Qwen2Tokenizer,
    T5Tokenizer,
)

MAX_TOKENS = 32


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes (GPT-2's table)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    out = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            out.append(256 + extra)
            extra += 1
    return [chr(c) for c in out]


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (byte alphabet, no merges): 514 tokens, no vocabulary download."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def build_t5_tokenizer() -> T5Tokenizer:
    """A character-level T5 (SentencePiece unigram) tokenizer: printable ASCII, each character also
    with the word-start marker, so any prompt tokenizes without a vocabulary download."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


# Qwen's chat markup, enough for pipelines that format prompts as a system + user conversation.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level Qwen2 tokenizer without merges (one token per byte) and Qwen's chat template."""
    vocab = {c: i for i, c in enumerate(_byte_alphabet())}
    return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                          chat_template=QWEN_CHAT_TEMPLATE)


def char_clip_encoder(tokenizer: CLIPTokenizer, hidden: int, intermediate: int, layers: int,
                      positions: int) -> CLIPTextModel:
    """A small CLIP text encoder for the character-level tokenizer (random weights: seed first)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_attention_heads=4,
            num_hidden_layers=layers,
            max_position_embeddings=positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            layer_norm_eps=1e-5,
        )
    )


def build_demo_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The `demo-tiny` model: SD 1.5's architecture, about 2 M parameters, seeded random weights."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = char_clip_encoder(tokenizer, hidden=32, intermediate=37, layers=5, positions=MAX_TOKENS)
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
