"""Init images and strength are checked at the edge: every refusal is one line naming the field and
the allowed range, before anything is queued; the width/height multiples each family's diffusers
pipeline needs are enforced for every job."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from farm.cli.main import main
from farm.contracts.errors import InvalidInput
from farm.jobs.init_image import first_step
from farm.jobs.jobspec import load_job, make_job


def png(width: int = 40, height: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (35, 70, 225)).save(out, format="PNG")
    return out.getvalue()


def refused(field: str, match: str, **fields) -> None:
    with pytest.raises(InvalidInput, match=match) as e:
        make_job(**{"model": "demo-tiny", "prompts": ["a"], **fields})
    assert e.value.field == field and "\n" not in str(e.value)


@pytest.mark.parametrize("strength", [0, -0.5, 1.01, 2, float("nan"), float("inf"), "0.5", True, None])
def test_strength_must_be_in_zero_one(strength) -> None:
    if strength is None:  # the default (0.75) is fine
        assert make_job(model="demo-tiny", prompts=["a"], init_image=png()).strength == 0.75
        return
    refused("strength", r"in \(0, 1\]", init_image=png(), strength=strength)


def test_strength_must_leave_two_steps() -> None:
    """A shard runs as at least two segments, as every job does: img2img must keep two steps."""
    refused("strength", r"must be at least 0.5 with 4 steps \(up to 1\): it runs 1 of them", init_image=png(),
            steps=4, strength=0.3)
    assert make_job(model="demo-tiny", prompts=["a"], init_image=png(), steps=4, strength=0.5).run_steps == 2
    with pytest.raises(InvalidInput, match="must be above 0.25 with 4 steps"):
        make_job(model="tiny-flux", prompts=["a"], init_image=png(), steps=4, strength=0.2)
    assert make_job(model="tiny-flux", prompts=["a"], init_image=png(), steps=4, strength=0.3).run_steps == 2


def test_strength_needs_an_init_image() -> None:
    refused("strength", "only with an init image", strength=0.5)


def test_strength_one_runs_every_step_and_text_jobs_run_all() -> None:
    job = make_job(model="demo-tiny", prompts=["a"], init_image=png(), steps=6, strength=1.0)
    assert (job.first_step, job.run_steps) == (0, 6)
    assert make_job(model="demo-tiny", prompts=["a"], steps=6).run_steps == 6


@pytest.mark.parametrize(("family", "steps", "strength", "start"), [
    ("sd15", 10, 0.75, 3), ("sdxl", 10, 0.75, 3), ("flux", 10, 0.75, 2), ("sd15", 5, 0.7, 2), ("flux", 5, 0.7, 1),
    ("sd15", 20, 0.75, 5), ("flux", 20, 0.75, 5), ("sd15", 10, 1.0, 0), ("flux", 10, 1.0, 0),
])
def test_first_step_rounds_as_each_pipeline_does(family: str, steps: int, strength: float, start: int) -> None:
    assert first_step(family, steps, strength) == start


@pytest.mark.parametrize("data", [b"", b"not an image at all", png()[:60]])
def test_unreadable_image_is_refused(data: bytes) -> None:
    refused("init_image", "PIL can read", init_image=data)


def test_huge_image_is_refused_before_decoding() -> None:
    refused("init_image", "at most 8192 pixels a side", init_image=png(9000, 8))


@pytest.mark.parametrize("model", ["tiny-hunyuan15", "tiny-wan21", "tiny-sdxl-refiner"])
def test_families_without_img2img_refuse_the_image(model: str) -> None:
    with pytest.raises(InvalidInput, match="takes no init image") as e:
        make_job(model=model, prompts=["a"], init_image=png())
    assert e.value.field == "init_image"


@pytest.mark.parametrize(("model", "field", "value", "multiple"), [
    ("tiny-flux", "width", 40, 16), ("tiny-ltx", "height", 48, 32), ("tiny-wan21", "width", 40, 16),
    ("tiny-hunyuan15", "height", 24, 16), ("tiny-sdxl", "width", 36, 8), ("demo-tiny", "height", 12, 8),
])
def test_sizes_follow_each_family_multiple(model: str, field: str, value: int, multiple: int) -> None:
    with pytest.raises(InvalidInput, match=f"multiple of {multiple} from {multiple}") as e:
        make_job(model=model, prompts=["a"], **{field: value})
    assert e.value.field == field


def test_job_file_image_is_relative_to_the_file(tmp_path) -> None:
    (tmp_path / "init.png").write_bytes(png())
    job_file = tmp_path / "job.toml"
    job_file.write_text('model = "demo-tiny"\nprompts = ["a"]\ninit_image = "init.png"\nstrength = 0.5\n')
    job, image = load_job(job_file)
    assert image == png() and job.init_image and job.strength == 0.5
    job_file.write_text('model = "demo-tiny"\nprompts = ["a"]\ninit_image = "missing.png"\n')
    with pytest.raises(InvalidInput, match="missing.png does not exist"):
        load_job(job_file)


@pytest.mark.parametrize(("args", "needle"), [
    (["--init-image", "{missing}"], "init_image: "),
    (["--init-image", "{folder}"], "is a folder"),
    (["--init-image", "{text}"], "PIL can read"),
    (["--init-image", "{good}", "--strength", "0"], "strength: must be a number in (0, 1]"),
    (["--strength", "0.5"], "strength: applies only with an init image"),
])
def test_cli_refuses_in_one_line(args: list[str], needle: str, tmp_path, capsys) -> None:
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "good.png").write_bytes(png())
    paths = {"missing": tmp_path / "nope.png", "folder": tmp_path, "text": tmp_path / "text.png",
             "good": tmp_path / "good.png"}
    argv = ["render", "a red circle", "--model", "demo-tiny", "--simulate", "8", "--out", str(tmp_path / "out"),
            *(a.format(**paths) for a in args)]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
