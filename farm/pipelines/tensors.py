"""torch tensors to and from the framework-free `RawTensor` the wire codec carries."""

from __future__ import annotations

import numpy as np
import torch

from farm.wire.checkpoint import RawTensor

_TORCH = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in _TORCH.items()}


def to_raw(t: torch.Tensor) -> RawTensor:
    """Exact bytes of a tensor (moved to the CPU); bfloat16 travels as its own 2-byte pattern."""
    t = t.detach().to("cpu").contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return RawTensor(_NAMES[t.dtype], tuple(t.shape), data)


def from_raw(raw: RawTensor, device: torch.device | str = "cpu") -> torch.Tensor:
    dtype = _TORCH[raw.dtype]
    if not raw.data:
        return torch.empty(raw.shape, dtype=dtype, device=device)
    flat = torch.from_numpy(np.frombuffer(bytearray(raw.data), dtype=np.uint8))
    return flat.view(dtype).reshape(raw.shape).to(device)
