"""A job's LoRA adapters on a node's loaded pipelines, with diffusers' LoRA support (peft).

The base weights are loaded once per model (`Engine`); adapters come and go on top of them: each
adapter file is loaded into a stage's pipeline once, under a name made from its hash
(`load_lora_weights(..., adapter_name=...)`), and every segment then switches the pipeline to its
job's adapters and weights (`set_adapters`), or turns them off for a job without any
(`disable_lora`). Successive jobs with different adapters on the same model therefore reload
nothing but the adapter files they have not used yet, and the least recently used adapter is
deleted when a pipeline holds more than `MAX_LOADED`.

Adapters change the denoiser (UNet or transformer) only: the stages that denoise take them, the
text encoders never do (`farm.jobs.loras` refuses files with text-encoder weights), so a checkpoint's
prompt embeddings are the same with or without adapters.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from diffusers import DiffusionPipeline

from farm.contracts.domain import Lora
from farm.contracts.errors import InvalidInput
from farm.jobs.loras import MAX_LORAS, find_lora

# Adapters kept loaded per pipeline: at least one job's worth.
MAX_LOADED = max(8, MAX_LORAS)


def adapter_name(lora: Lora) -> str:
    """The adapter's name in the pipeline: its file's hash, so two versions of a file never mix."""
    return f"lora_{lora.sha256[:16]}"


def resolve(lora: Lora, index: int, home: Path | None) -> Path:
    """The adapter's file on this PC, checked against the hash the job pinned."""
    found = find_lora(lora.name, home)
    if found is None:
        raise InvalidInput(f"loras[{index}].name", f"adapter {lora.name} is not on this PC (it needs "
                                                   f"{lora.name}.safetensors with SHA-256 {lora.sha256[:12]}...)")
    if lora.sha256 and found.sha256 != lora.sha256:
        raise InvalidInput(f"loras[{index}].name", f"{found.path} has SHA-256 {found.sha256[:12]}..., the job "
                                                   f"was accepted with {lora.sha256[:12]}...")
    return found.path


class StageAdapters:
    """The adapters loaded into one stage's pipeline, least recently used first."""

    def __init__(self) -> None:
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.loads = 0

    def apply(self, pipe: DiffusionPipeline, loras: tuple[Lora, ...], home: Path | None) -> None:
        """Switch `pipe` to exactly `loras` at their weights (none: adapters off)."""
        if loras and not hasattr(pipe, "set_adapters"):
            raise InvalidInput("loras", f"{type(pipe).__name__} takes no LoRA adapters; leave loras empty")
        for i, lora in enumerate(loras):
            name = adapter_name(lora)
            if name not in self.loaded:
                pipe.load_lora_weights(str(resolve(lora, i, home)), adapter_name=name)
                self.loaded[name] = None
                self.loads += 1
            self.loaded.move_to_end(name)
        while len(self.loaded) > MAX_LOADED:
            pipe.delete_adapters(self.loaded.popitem(last=False)[0])
        if loras:
            pipe.enable_lora()
            pipe.set_adapters([adapter_name(lora) for lora in loras], adapter_weights=[lora.weight for lora in loras])
        elif self.loaded:
            pipe.disable_lora()
