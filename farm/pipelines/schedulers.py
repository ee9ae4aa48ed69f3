"""Samplers by name, and the scheduler state a segment hand-off must carry.

A scheduler's mutable state (step index, begin index, DPM-Solver's `model_outputs` and
`lower_order_nums`, UniPC's `timestep_list`, Heun's stored derivative) lives in its instance
attributes; `capture` takes all of them, so a resumed scheduler is the one that stopped, whatever
its class. Second-order samplers (Heun, DPM2) evaluate the model twice per step and keep half a
step in those attributes: they may only be cut where a whole step ends (`check_cut`).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from farm.contracts.errors import InvalidInput
from farm.pipelines.tensors import from_raw, to_raw
from farm.wire.checkpoint import RawTensor, StateValue

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "heun": HeunDiscreteScheduler,
    "dpm2": KDPM2DiscreteScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,
}
OPTIONS: dict[str, dict[str, object]] = {
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2},
}
SECOND_ORDER = {"heun", "dpm2"}
# Configuration lives in `_internal_dict` and is rebuilt by from_config; the rest is state.
_CONFIG = {"_internal_dict"}
# The state key naming the attributes that lived on the CPU beside a model on an accelerator
# (diffusers keeps `sigmas` there "to avoid too much CPU/GPU communication"); the rest lived on the
# model's device. A CPU node cannot tell the two apart, so it names diffusers' CPU-side attributes.
ON_CPU = "_farm_on_cpu"
DIFFUSERS_CPU_SIDE = ("sigmas",)


def make(sampler: str, base_config: dict) -> SchedulerMixin:
    """A fresh scheduler of `sampler`, configured like the model's own (betas, shift, ...)."""
    return SCHEDULERS[sampler].from_config(base_config, **OPTIONS.get(sampler, {}))


def whole_step_ends(sampler: str, steps: int) -> list[int]:
    """Loop indices (model evaluations done) at which a whole step ends, for `steps` steps.

    First-order: every index. Heun and DPM2: step 1 ends after evaluation 2, step k after 2k, except
    the last step, which is one evaluation (its next sigma is 0), so there are 2*steps - 1 in all.
    """
    if sampler not in SECOND_ORDER:
        return list(range(steps + 1))
    return [0, *range(2, 2 * steps - 1, 2), 2 * steps - 1]


def evaluations(sampler: str, steps: int) -> int:
    """How many loop iterations (model evaluations) `steps` steps take."""
    return whole_step_ends(sampler, steps)[-1]


def check_cut(sampler: str, steps: int, at: int) -> None:
    """Refuse a cut in the middle of a second-order step: its half-step state is not a checkpoint."""
    if at not in whole_step_ends(sampler, steps):
        raise InvalidInput(
            "segment", f"{sampler} is second-order: cut only where a whole step ends "
            f"(evaluations {whole_step_ends(sampler, steps)}), not at {at}"
        )


def _out(value: object, name: str) -> StateValue:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return to_raw(value)
    if isinstance(value, np.ndarray):
        return to_raw(torch.from_numpy(value))
    if isinstance(value, (list, tuple)):
        return [_out(v, name) for v in value]
    raise TypeError(f"scheduler attribute {name!r} of type {type(value).__name__} cannot travel in a checkpoint")


def _in(value: StateValue, device: torch.device, history: torch.dtype | None) -> object:
    if isinstance(value, RawTensor):
        tensor = from_raw(value, device)
        # Multistep history (past model outputs, the last sample) has the latents' shape and dtype;
        # schedules (sigmas, timesteps) are 1-D and keep theirs.
        if history is not None and tensor.is_floating_point() and tensor.ndim >= 2:
            tensor = tensor.to(history)
        return tensor
    if isinstance(value, list):
        return [_in(v, device, history) for v in value]
    return value


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def capture(scheduler: SchedulerMixin, device: torch.device = torch.device("cpu")) -> dict[str, StateValue]:
    """Every mutable attribute of a scheduler run beside a model on `device`, as checkpoint values,
    with the names of those that lived on the CPU (`ON_CPU`)."""
    state = {k: v for k, v in vars(scheduler).items() if k not in _CONFIG}
    on_cpu = [k for k, v in state.items()
              if (ts := _tensors(v)) and all(t.device.type == "cpu" for t in ts)
              and (device.type != "cpu" or k in DIFFUSERS_CPU_SIDE)]
    return {**{k: _out(v, k) for k, v in state.items()}, ON_CPU: sorted(on_cpu)}


def restore(scheduler: SchedulerMixin, state: dict[str, StateValue], device: torch.device,
            history: torch.dtype | None = None) -> None:
    """Set a scheduler's state on a node whose model runs on `device`: each tensor goes back to the
    side it was saved from (the CPU, or the model's device, whichever that is here), and history
    tensors take the receiving node's latent dtype (`history`; None keeps the saved dtype)."""
    raw_cpu = state.get(ON_CPU)
    on_cpu = set(raw_cpu) if isinstance(raw_cpu, list) else set()
    cpu = torch.device("cpu")
    for key, value in state.items():
        if key != ON_CPU:
            setattr(scheduler, key, _in(value, cpu if key in on_cpu else device, history))
