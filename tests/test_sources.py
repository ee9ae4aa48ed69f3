"""Real models load through the same from_pretrained path as the built-in ones: a diffusers folder,
or a Hugging Face id already in the local cache (no download). Tested with a tiny pipeline saved to
a temporary folder and to a fake Hugging Face cache."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from farm.contracts.domain import NodeInfo, SegmentTask
from farm.contracts.errors import InvalidInput
from farm.core.costmodel import PROFILES
from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job
from farm.jobs.sources import external_model
from farm.pipelines.families import get_family
from farm.pipelines.runner import SegmentRunner


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("real") / "my-sd15"
    get_family("sd15").build_tiny().save_pretrained(folder)
    return folder


def render(model: str, home: Path) -> list[np.ndarray]:
    job = make_job(model=model, prompts=["a red circle"], seeds=2, steps=4, width=64, height=64, sampler="euler_a")
    runner = SegmentRunner(NodeInfo("n", 12.0), home)
    first = runner.run(SegmentTask(job, "s0", job.samples(), 0, 0, 2, None))
    last = runner.run(SegmentTask(job, "s0", job.samples(), 1, 2, 4, first.checkpoint))
    return [np.frombuffer(b, np.uint8) for b in last.images]


def test_a_local_folder_is_a_model_of_its_family(tiny_sd_folder: Path, farm_home: Path) -> None:
    info = get_model(str(tiny_sd_folder))
    assert (info.family, info.cost_scale, info.default_size, info.default_guidance, info.source) == (
        "sd15", 1, 512, 7.5, str(tiny_sd_folder))
    # Costed from its own files (the tiny UNet's few M parameters), timed as SD 1.5.
    profile = PROFILES[info.profile]
    assert profile.timing == "sd15" and profile.component("unet").weights_gib < 0.01
    # The same weights as the built-in demo model: the same pixels through the same path.
    for ours, builtin in zip(render(str(tiny_sd_folder), farm_home), render("demo-tiny", farm_home)):
        assert np.array_equal(ours, builtin)


def test_a_cached_hugging_face_id_loads_without_network(tiny_sd_folder: Path, tmp_path: Path, farm_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--farmtest--tiny-sd"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    import shutil

    shutil.copytree(tiny_sd_folder, snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    external_model.cache_clear()
    info = get_model("farmtest/tiny-sd")
    assert info.family == "sd15" and Path(info.source) == snapshot
    assert len(render("farmtest/tiny-sd", farm_home)) == 2
    external_model.cache_clear()


def test_unknown_and_unsupported_models_are_named(tiny_sd_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="huggingface-cli download"):
        get_model("nobody/nothing-here")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(InvalidInput, match="KandinskyPipeline.*is not supported"):
        get_model(str(odd))
    with pytest.raises(InvalidInput, match="multiple of 8 from 8 to 1024"):
        make_job(model=str(tiny_sd_folder), prompts=["a"], width=2048)


def test_a_folder_naming_another_module_is_refused_before_anything_imports_it(tiny_sd_folder: Path,
                                                                               tmp_path: Path) -> None:
    """diffusers imports the library model_index.json names for each component: only diffusers and
    transformers are allowed, checked by the head (get_model) and by the node's engine."""
    import shutil
    import sys

    import torch

    from farm.pipelines.engine import Engine

    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_sd_folder, hostile)
    index = json.loads((hostile / "model_index.json").read_text())
    index["unet"] = ["this", "UNet2DConditionModel"]
    (hostile / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match=r"^model: .*component 'unet' is \['this'.*allowed: a class of diffusers"):
        get_model(str(hostile))
    with pytest.raises(InvalidInput, match="^model: "):
        Engine(get_family("sd15"), hostile, str(hostile), torch.device("cpu"))
    assert "this" not in sys.modules


@pytest.mark.parametrize("name", ["../x", "a/..", "../../etc/passwd", "x/../../y", "-a/b"])
def test_a_model_that_is_no_name_folder_or_cached_id_is_a_client_error(name: str) -> None:
    with pytest.raises(InvalidInput, match="^model: unknown model"):
        get_model(name)
