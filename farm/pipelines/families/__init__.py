"""Model families by name: each knows how its diffusers pipeline encodes, denoises and decodes."""

from __future__ import annotations

from farm.pipelines.families.base import Family
from farm.pipelines.families.sd15 import SD15

FAMILIES: dict[str, Family] = {f.name: f for f in (SD15(),)}


def get_family(name: str) -> Family:
    return FAMILIES[name]
