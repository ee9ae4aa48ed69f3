"""Model families by name: each knows how its diffusers pipeline encodes, denoises and decodes."""

from __future__ import annotations

from farm.pipelines.families.base import Family
from farm.pipelines.families.flux import Flux
from farm.pipelines.families.hunyuan15 import HunyuanVideo15
from farm.pipelines.families.hunyuan15_i2v import HunyuanVideo15I2V
from farm.pipelines.families.ltx import LTX
from farm.pipelines.families.sd15 import SD15
from farm.pipelines.families.sdxl import SDXL, SDXLRefined
from farm.pipelines.families.wan import Wan21, Wan22
from farm.pipelines.families.wan_i2v import Wan21I2V, Wan22I2V

FAMILIES: dict[str, Family] = {f.name: f for f in (SD15(), SDXL(), SDXLRefined(), Flux(), LTX(), Wan21(), Wan22(),
                                                   Wan21I2V(), Wan22I2V(),
                                                   HunyuanVideo15(), HunyuanVideo15I2V())}


def get_family(name: str) -> Family:
    return FAMILIES[name]
