"""Validation at the edge: each bad field is named with its allowed range."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.contracts.errors import InvalidInput
from farm.jobs.jobspec import load_job_file, make_job


def test_defaults_come_from_the_model() -> None:
    job = make_job(prompts=["a"])
    assert (job.model, job.width, job.height, job.steps, job.seeds) == ("demo-tiny", 64, 64, 20, (0,))


def test_samples_are_prompt_major_with_counted_seeds() -> None:
    job = make_job(prompts=["a", "b"], seeds=2, seed=10)
    expected = [(0, "a", 10), (1, "a", 11), (2, "b", 10), (3, "b", 11)]
    assert [(s.index, s.prompt, s.seed) for s in job.samples()] == expected


@pytest.mark.parametrize(
    "fields, field, allowed",
    [
        ({"steps": 0}, "steps", "from 2 to 1000"),
        ({"steps": -5}, "steps", "from 2 to 1000"),
        ({"steps": 1}, "steps", "from 2 to 1000"),
        ({"width": 60}, "width", "multiple of 8 from 8 to 128"),
        ({"height": 136}, "height", "multiple of 8 from 8 to 128"),
        ({"width": "64"}, "width", "multiple of 8"),
        ({"model": "sd-99"}, "model", "give a built-in name (demo-shapes, demo-tiny"),
        ({"prompts": []}, "prompts", "1 to 10000"),
        ({"prompts": "not a list"}, "prompts", "1 to 10000"),
        ({"prompts": ["ok", "  "]}, "prompts[1]", "non-empty"),
        ({"seeds": 0}, "seeds", "from 1 to 10000"),
        ({"guidance": -0.5}, "guidance", "from 0 to 50"),
        ({"guidance": float("nan")}, "guidance", "from 0 to 50"),
        ({"sampler": "lms"}, "sampler", "one of ddim, euler"),
        ({"sampler": "flow_euler"}, "sampler", "for demo-tiny"),
        ({"frames": 2}, "frames", "from 1 to 1"),
        ({"steps": True}, "steps", "whole number"),
    ],
)
def test_bad_fields_are_named(fields: dict, field: str, allowed: str) -> None:
    args = {"prompts": ["a red circle"], **fields}
    with pytest.raises(InvalidInput) as e:
        make_job(**args)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")
    assert allowed in str(e.value)
    assert "\n" not in str(e.value)


def test_job_file_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "job.toml"
    f.write_text('prompts = ["a", "b"]\nseeds = 2\nsteps = 4\nsampler = "ddim"\nguidance = 3.0\n')
    job = load_job_file(f)
    assert (job.prompts, job.seeds, job.steps, job.sampler, job.guidance) == (("a", "b"), (0, 1), 4, "ddim", 3.0)


@pytest.mark.parametrize(
    "text, field",
    [
        ('prompts = ["a"]\nsteps = 0\n', "steps"),
        ('prompts = ["a"]\nstep = 10\n', "step"),
        ("seeds = 2\n", "prompts"),
        ('prompts = ["a"\n', "job file"),
    ],
)
def test_bad_job_files_are_named(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "job.toml"
    f.write_text(text)
    with pytest.raises(InvalidInput) as e:
        load_job_file(f)
    assert e.value.field == field


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_job_file(tmp_path / "nope.toml")
