"""Which dtype each component of a model runs in on a device (the policy is data in
`farm.jobs.catalog.PRECISION`; this turns it into torch dtypes for one device).

Recorded with every segment (`Engine.precision`), since the same seed gives different pixels in
fp16, bf16 and fp32: provenance must say which one a node used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from farm.jobs.catalog import PRECISION

TORCH = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
NAMES = {v: k for k, v in TORCH.items()}


@dataclass(frozen=True)
class Precision:
    """The model's dtype, and the components that run in another one."""

    dtype: torch.dtype
    components: dict[str, torch.dtype] = field(default_factory=dict)

    def of(self, component: str) -> torch.dtype:
        return self.components.get(component, self.dtype)

    def load_arg(self) -> torch.dtype | dict[str, torch.dtype]:
        """`from_pretrained`'s torch_dtype: one dtype, or per component with a default."""
        return {"default": self.dtype, **self.components} if self.components else self.dtype

    def describe(self) -> str:
        """'bf16', or 'bf16 (vae fp32)': what provenance records."""
        extra = ", ".join(f"{c} {NAMES[d]}" for c, d in sorted(self.components.items()))
        return f"{NAMES[self.dtype]} ({extra})" if extra else NAMES[self.dtype]


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def policy(family: str, device: torch.device, dtype: torch.dtype | None = None) -> Precision:
    """The family's precision on `device`: fp32 on a CPU, the family's dtype on a GPU (bf16 falls back
    to fp16 where the GPU lacks it). `dtype` overrides the model's dtype (a bf16 CPU node, tests);
    components with their own dtype keep it."""
    wanted, parts = PRECISION[family]
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else TORCH[wanted]
        if dtype == torch.bfloat16 and not bf16_supported(device):
            dtype = torch.float16
    components = {c: TORCH[d] for c, d in parts.items() if TORCH[d] != dtype}
    return Precision(dtype, components)
