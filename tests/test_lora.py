"""LoRA styles (issue 17, points 4 and 5).

A job names adapters with weights in its job file, on the command line (`--lora NAME:WEIGHT`) or in
an A1111 prompt (`<lora:NAME:WEIGHT>`); each is pinned to its file's SHA-256 when the job is made,
and a bad one is a one-line error naming the entry. A node loads an adapter once on top of the base
weights and switches adapters between jobs without reloading the base; a shard cut at any step
boundary equals the uncut run with adapters on, and the uncut run equals diffusers' own LoRA call.
Through the farm, the bundled `demo-shapes-outline` draws outlines in the prompt's colours where
demo-shapes draws filled shapes, and its images equal plain diffusers with the same LoRA loaded.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_harness import assert_cuts_equal_uncut, full_run

from farm.contracts.domain import Lora, NodeInfo, SegmentTask
from farm.contracts.errors import InvalidInput
from farm.demo_model.evaluate import CHECK_GUIDANCE, CHECK_PROMPTS, CHECK_SAMPLER, CHECK_STEPS, judge, outlines, report
from farm.jobs.catalog import FAMILY_SAMPLERS
from farm.jobs.jobspec import load_job_file, make_job
from farm.jobs.loras import find_lora
from farm.pipelines.loader import builtin_folder
from farm.runtime.outputs import PngWriter, read_provenance

LORA = "demo-shapes-outline"
MODEL = "demo-shapes"
TINY = "tiny-style"  # a UNet adapter for demo-tiny, made in `tiny_adapter`
PROMPTS = ["a red circle on a blue background", "a yellow square on a green background"]


def demo_job(loras: list[dict] | None = None, prompts: list[str] = PROMPTS, seeds: int = 1):
    return make_job(model=MODEL, prompts=prompts, seeds=seeds, steps=CHECK_STEPS, sampler=CHECK_SAMPLER,
                    guidance=CHECK_GUIDANCE, loras=loras)


def body_sha256(path: Path) -> str:
    """SHA-256 of a safetensors file after its header: kohya's "addnet" hash, which A1111 shortens."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()


# ----- naming adapters ----------------------------------------------------------------------------


def test_job_file_cli_and_a1111_prompt_name_the_same_pinned_adapter(tmp_path: Path) -> None:
    from farm.api.a1111 import Txt2ImgRequest, split_loras, to_job
    from farm.cli.main import _job_from_args, build_parser

    found = find_lora(LORA)
    assert found is not None and found.path.parent.name == "loras"
    job = demo_job([{"name": LORA, "weight": 0.8}])
    assert job.loras == (Lora(LORA, 0.8, hashlib.sha256(found.path.read_bytes()).hexdigest(),
                              body_sha256(found.path)[:12]),)

    (tmp_path / "job.toml").write_text(
        f'model = "{MODEL}"\nprompts = {json.dumps(PROMPTS)}\nsteps = {CHECK_STEPS}\nsampler = "{CHECK_SAMPLER}"\n'
        f'guidance = {CHECK_GUIDANCE}\nloras = [{{name = "{LORA}", weight = 0.8}}]\n', encoding="utf-8")
    assert load_job_file(tmp_path / "job.toml") == job

    args = build_parser().parse_args(["render", *PROMPTS, "--steps", str(CHECK_STEPS), "--sampler", CHECK_SAMPLER,
                                      "--guidance", str(CHECK_GUIDANCE), "--lora", f"{LORA}:0.8"])
    assert _job_from_args(args) == job

    prompt, loras = split_loras(f"a red circle <lora:{LORA}:0.8> on a blue background <lora:{LORA}>")
    assert prompt == PROMPTS[0] and loras == [{"name": LORA, "weight": 0.8}, {"name": LORA, "weight": 1.0}]
    request = Txt2ImgRequest(prompt=f"{PROMPTS[0]} <lora:{LORA}:0.8>", seed=0, steps=CHECK_STEPS,
                             sampler_name="Euler a", cfg_scale=CHECK_GUIDANCE)
    spec = to_job(request, MODEL, "local").spec
    assert spec.prompts == (PROMPTS[0],) and spec.loras == job.loras


def test_adapters_travel_to_the_head_and_through_the_journal() -> None:
    from farm.api import convert
    from farm.runtime import journal_codec

    job = demo_job([{"name": LORA, "weight": -0.5}])
    msg = convert.spec_to_proto(job)
    assert convert.spec_from_proto(msg) == job  # `farm submit`: the head validates and pins again
    assert convert.job_from_proto(convert.job_to_proto(view_of(job))).spec == job  # as the head reports it
    assert journal_codec.decode(journal_codec.encode(job)) == job


def view_of(job):
    from farm.contracts.control import JobView
    from farm.contracts.domain import JobStatus

    return JobView(id="j", spec=job, status=JobStatus.QUEUED, samples_done=0, samples_total=2, steps_done=0,
                   steps_total=24, submitted_at=0.0, position=0)


@pytest.mark.parametrize(("loras", "field"), [
    ([{"name": "no-such-style", "weight": 1.0}], "loras[0].name"),
    ([{"name": "../../etc/passwd"}], "loras[0].name"),
    ([{"name": LORA, "weight": 4.5}], "loras[0].weight"),
    ([{"name": LORA, "weight": float("nan")}], "loras[0].weight"),
    ([{"name": LORA, "weight": "strong"}], "loras[0].weight"),
    ([{"name": LORA}, {"name": LORA, "weight": 0.5}], "loras[1].name"),
    ([{"name": LORA, "wieght": 1.0}], "loras[0]"),
    ("demo-shapes-outline", "loras"),
])
def test_a_bad_adapter_is_a_one_line_error_naming_its_entry(loras: object, field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        demo_job(loras)  # type: ignore[arg-type]
    assert e.value.field == field and "\n" not in str(e.value)


def test_adapters_that_cannot_apply_and_malformed_flags_and_tags_are_refused(capsys, farm_home: Path) -> None:
    from safetensors.torch import save_file

    from farm.api.a1111 import BadField, Txt2ImgRequest, to_job
    from farm.cli.main import main

    with pytest.raises(InvalidInput, match=r"loras\[0\]\.name: demo-shapes-outline is for demo-shapes models"):
        make_job(model="tiny-sdxl", prompts=["x"], loras=[{"name": LORA}])
    (farm_home / "loras").mkdir(exist_ok=True)
    save_file({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8)},
              str(farm_home / "loras" / "te-style.safetensors"))
    with pytest.raises(InvalidInput, match=r"loras\[0\]\.name: te-style has text-encoder weights"):
        make_job(model="demo-tiny", prompts=["x"], loras=[{"name": "te-style"}])
    (farm_home / "loras" / "broken.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(InvalidInput, match=r"loras\[0\]\.name: broken.safetensors is not a safetensors file"):
        make_job(model="demo-tiny", prompts=["x"], loras=[{"name": "broken"}])
    assert main(["render", "a red circle", "--lora", f"{LORA}:heavy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lora" in err and "-4 to 4" in err
    assert main(["render", "a red circle", "--lora", "nothing-like-it:1"]) == 2
    assert "loras[0].name" in capsys.readouterr().err
    for prompt, field in ((f"x <lora:{LORA}:much>", "prompt"), ("x <lora:missing:1>", "loras[0].name")):
        with pytest.raises(BadField) as e:
            to_job(Txt2ImgRequest(prompt=prompt), MODEL, "local")
        assert e.value.field == field


def test_parameters_name_adapters_and_hashes_as_a1111_writes_them(tmp_path: Path) -> None:
    from farm.contracts.domain import StepRun

    job = demo_job([{"name": LORA, "weight": 0.8}])
    sample = job.samples()[0]
    rgb = np.zeros((64, 64, 3), np.uint8).tobytes()
    path = PngWriter(tmp_path).write("job-1", job, sample, rgb, [StepRun("n", "cpu", 0, CHECK_STEPS)])
    with Image.open(path) as im:
        text = im.text["parameters"]
    short = body_sha256(find_lora(LORA).path)[:12]
    assert text.splitlines()[0] == f"{sample.prompt} <lora:{LORA}:0.8>"
    assert text.endswith(f', Model: {MODEL}, Lora hashes: "{LORA}: {short}"')
    assert read_provenance(path)["loras"] == [{"name": LORA, "weight": 0.8, "sha256": job.loras[0].sha256,
                                               "short_hash": short}]


# ----- on a node ----------------------------------------------------------------------------------


def run_shard(runner, job, cut: int) -> list[np.ndarray]:
    """The job's one shard as two segments (a checkpoint handed over at step `cut`) on `runner`."""
    samples = job.samples()
    first = runner.run(SegmentTask(job, "s", samples, 0, 0, cut, None))
    last = runner.run(SegmentTask(job, "s", samples, 1, cut, job.steps, first.checkpoint))
    return [np.frombuffer(b, np.uint8).reshape(job.height, job.width, 3) for b in last.images]


def test_successive_jobs_switch_adapters_without_reloading_the_base(farm_home: Path) -> None:
    from farm.pipelines.runner import SegmentRunner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = SegmentRunner(NodeInfo("n", 8.0), farm_home)
        plain_job, styled, half = demo_job(), demo_job([{"name": LORA, "weight": 1.0}]), demo_job([{"name": LORA,
                                                                                                   "weight": 0.5}])
        before = run_shard(runner, plain_job, 5)
        engine = runner.engines[MODEL]
        base_loads = engine.loads
        assert base_loads == 3 and engine.adapter_loads == 0  # encode, denoise, decode; no adapter yet
        with_lora = run_shard(runner, styled, 7)
        after = run_shard(runner, plain_job, 3)
        weaker = run_shard(runner, half, 5)
        assert runner.engines[MODEL] is engine and engine.loads == base_loads, "the base model was loaded again"
        assert engine.adapter_loads == 1  # the file once, into the denoising stage
        assert all(np.array_equal(a, b) for a, b in zip(before, after)), "adapters stayed on after their job"
        assert not any(np.array_equal(a, b) for a, b in zip(before, with_lora))
        assert not any(np.array_equal(a, b) for a, b in zip(with_lora, weaker))
        assert all(np.array_equal(a, b) for a, b in zip(with_lora, engine.plain(styled, styled.samples())))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_adapter(farm_home: Path) -> Path:
    """An adapter for demo-tiny's UNet (seeded random weights, peft's layout), saved where a node
    looks for adapters."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from farm.pipelines.families import get_family

    pipe = get_family("sd15").build_tiny()
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v", "conv1"]))
    gen = torch.Generator().manual_seed(17)
    weights = {f"unet.{key}": torch.randn(value.shape, generator=gen) * 0.3
               for key, value in sorted(get_peft_model_state_dict(pipe.unet).items())}
    path = farm_home / "loras" / f"{TINY}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path), metadata={"format": "pt", "farm.family": "sd15"})
    return path


@pytest.mark.parametrize("sampler", FAMILY_SAMPLERS["sd15"])
def test_cut_at_every_step_boundary_equals_uncut_with_adapters(sampler: str, engines, tiny_adapter: Path) -> None:
    """As tests/test_segments.py checks for text-to-image, with an adapter on: every segment of the
    shard applies it, on the engine that encodes and on one that only resumes."""
    job = make_job(model="demo-tiny", prompts=["a red circle", "a blue square"], steps=4, sampler=sampler,
                   loras=[{"name": TINY, "weight": 0.7}])
    e = engines("sd15")
    assert_cuts_equal_uncut(e, job)
    styled = full_run(e.first, job)
    assert all(np.array_equal(a, b) for a, b in zip(styled, e.first.plain(job, job.samples())))
    unstyled = full_run(e.first, make_job(model="demo-tiny", prompts=list(job.prompts), steps=4, sampler=sampler))
    assert not any(np.array_equal(a, b) for a, b in zip(styled, unstyled)), "the adapter changed nothing"


def test_a_node_refuses_an_adapter_file_that_is_not_the_one_the_job_pinned(farm_home: Path) -> None:
    from farm.pipelines.adapters import resolve

    lora = demo_job([{"name": LORA}]).loras[0]
    assert resolve(lora, 0, farm_home) == find_lora(LORA).path
    with pytest.raises(InvalidInput, match=r"loras\[2\]\.name: .*SHA-256"):
        resolve(Lora(LORA, 1.0, "0" * 64, ""), 2, farm_home)
    with pytest.raises(InvalidInput, match=r"loras\[0\]\.name: adapter gone is not on this PC"):
        resolve(Lora("gone", 1.0, "1" * 64, ""), 0, farm_home)


# ----- the bundled adapter through the farm -------------------------------------------------------


def test_the_committed_adapter_is_small_and_says_how_it_was_made() -> None:
    from safetensors import safe_open

    found = find_lora(LORA)
    assert found.path.stat().st_size <= 400 * 1024
    assert (found.family, found.base_model) == ("sd15", MODEL)
    with safe_open(str(found.path), "pt") as f:
        meta = f.metadata()
        assert all(k.startswith("unet.") and ".lora_" in k for k in f.keys())
    assert meta["farm.recipe"].startswith("python -m farm.demo_model.train_lora --out farm/models/loras")


@pytest.mark.slow
def test_the_farm_draws_outlines_in_the_prompts_colours_only_with_the_adapter(embedded: object, tmp_path: Path,
                                                                               farm_home: Path) -> None:
    from waiting import ready

    from farm.demo_model.evaluate import render_plain
    from farm.runtime.coordinator import Coordinator

    coordinator = Coordinator(embedded, PngWriter(tmp_path), max_segment_steps=4)
    ready(coordinator)
    results = {}
    for name, loras in (("filled", None), ("outlined", [{"name": LORA, "weight": 1.0}])):
        job = demo_job(loras, list(CHECK_PROMPTS))
        view = coordinator.render(job)
        assert view.status == "done", view.error
        paths = sorted((Path(p) for p in view.outputs), key=lambda p: read_provenance(p)["sample"])
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        verdicts = judge(list(job.prompts), [0] * len(images), images)
        print(name, report(verdicts).splitlines()[-1])
        results[name] = (job, view, images, verdicts)
    _, _, _, filled = results["filled"]
    job, view, images, verdicts = results["outlined"]
    n = len(CHECK_PROMPTS)
    assert sum(v.ok for v in filled) >= 0.9 * n and outlines(filled) <= 0.1 * n, report(filled)
    assert sum(v.ok for v in verdicts) >= 0.9 * n and outlines(verdicts) >= 0.8 * n, report(verdicts)
    # Plain diffusers with the same file loaded (`load_lora_weights`), one call per seed with every
    # prompt batched: a different batch composition than the farm's shards, so within 1/255.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = render_plain(builtin_folder(MODEL, farm_home), CHECK_PROMPTS, [0], CHECK_STEPS, CHECK_SAMPLER,
                                CHECK_GUIDANCE, lora=find_lora(LORA).path)
    finally:
        torch.set_num_threads(threads)
    for i, (ours, theirs) in enumerate(zip(images, expected, strict=True)):
        assert np.abs(ours.astype(int) - theirs).max() <= 1, f"sample {i} differs from diffusers with the LoRA"
    with Image.open(view.outputs[0]) as im:
        assert f'Lora hashes: "{LORA}: {job.loras[0].short_hash}"' in im.text["parameters"]


# ----- the training script ------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_training_script_is_reproducible_and_its_file_loads(tmp_path: Path) -> None:
    from farm.demo_model import train_lora

    args = ["--steps", "2", "--latents", "32", "--batch", "4", "--seed", "3", "--no-evaluate"]
    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            assert train_lora.main(["--out", str(tmp_path / name), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = (tmp_path / n / f"{LORA}.safetensors" for n in ("a", "b"))
    assert body_sha256(a) == body_sha256(b)  # the same tensors; the recipe names each run's --out
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(builtin_folder(MODEL)))
    pipe.load_lora_weights(str(a), adapter_name="x")
    assert "x" in pipe.get_active_adapters()
