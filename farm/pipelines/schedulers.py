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


def _in(value: StateValue, device: torch.device) -> object:
    if isinstance(value, RawTensor):
        return from_raw(value, device)
    if isinstance(value, list):
        return [_in(v, device) for v in value]
    return value


def capture(scheduler: SchedulerMixin) -> dict[str, StateValue]:
    """Every mutable attribute of a scheduler, as checkpoint values."""
    return {k: _out(v, k) for k, v in vars(scheduler).items() if k not in _CONFIG}


def restore(scheduler: SchedulerMixin, state: dict[str, StateValue], device: torch.device) -> None:
    for key, value in state.items():
        setattr(scheduler, key, _in(value, device))
