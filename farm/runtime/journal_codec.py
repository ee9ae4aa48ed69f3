"""The journal codec: farm events and state snapshots as self-describing JSON.

Each dataclass carries its type name and each container its kind (tuple, frozenset, map, enum), so
decoding needs no type hints and a snapshot read back compares equal to the state that was written:
the property the restart and replay tests check. Only the types registered here can be decoded, so
a database row can never name a class to instantiate.
"""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from typing import Any

from immutables import Map

from farm.contracts.control import Pause, PauseBy
from farm.contracts.domain import JobSpec, JobStatus, Lora, NodeInfo, Shard, StepRun
from farm.core import events
from farm.core.costmodel import Shape
from farm.core.speed import SpeedBook
from farm.core.state import FarmState, JobState, NodeRecord, Settings, ShardState

TYPES: dict[str, type] = {t.__name__: t for t in (
    *events.EVENT_TYPES, FarmState, JobState, ShardState, NodeRecord, Pause, Settings, SpeedBook, JobSpec, Shape,
    Shard, NodeInfo, StepRun, Lora,
)}
ENUMS: dict[str, type[Enum]] = {t.__name__: t for t in (JobStatus, PauseBy)}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return {"~enum": type(value).__name__, "v": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if TYPES.get(name) is not type(value):
            raise TypeError(f"{name} is not a journal type")
        return {"~type": name, **{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, Map):
        return {"~map": [[_plain(k), _plain(v)] for k, v in value.items()]}
    if isinstance(value, dict):
        return {"~dict": [[_plain(k), _plain(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"~tuple": [_plain(v) for v in value]}
    if isinstance(value, frozenset):
        return {"~frozenset": sorted((_plain(v) for v in value), key=repr)}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot record a {type(value).__name__}")


def _typed(value: Any) -> Any:
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "~type" in value:
        cls = TYPES.get(value["~type"])
        if cls is None:
            raise ValueError(f"unknown journal type {value['~type']!r}")
        return cls(**{k: _typed(v) for k, v in value.items() if k != "~type"})
    if "~enum" in value:
        return ENUMS[value["~enum"]](value["v"])
    if "~map" in value:
        return Map({_typed(k): _typed(v) for k, v in value["~map"]})
    if "~dict" in value:
        return {_typed(k): _typed(v) for k, v in value["~dict"]}
    if "~tuple" in value:
        return tuple(_typed(v) for v in value["~tuple"])
    if "~frozenset" in value:
        return frozenset(_typed(v) for v in value["~frozenset"])
    raise ValueError(f"untagged object in the journal: {sorted(value)}")


def encode(value: Any) -> str:
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False)


def decode(text: str) -> Any:
    return _typed(json.loads(text))
