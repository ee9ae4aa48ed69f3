"""demo-shapes, the bundled toy model (issue 9).

It loads with the same `from_pretrained` call as a real model; its training data shows what its
prompts say; rendered through the farm (shards cut into segments on several nodes, checkpoints
handed between them) its pictures follow their prompts; and the same check fails for a farm that
hands samples each other's prompt embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.contracts.domain import SegmentTask
from farm.demo_model import data
from farm.demo_model.evaluate import (
    CHECK_GUIDANCE,
    CHECK_PROMPTS,
    CHECK_SAMPLER,
    CHECK_STEPS,
    Verdict,
    accuracy,
    judge,
    report,
)
from farm.demo_model.judge import parse_prompt, read_image
from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job
from farm.pipelines.loader import builtin_folder
from farm.runtime.outputs import PngWriter, read_provenance
from farm.wire import checkpoint_codec as wire
from farm.wire.checkpoint import RawTensor

MODEL = "demo-shapes"
REQUIRED = 0.9
SEEDS = 2


def model_folder() -> Path:
    return builtin_folder(MODEL)


# ----- the committed model ------------------------------------------------------------------------


def test_catalog_points_at_committed_weights_with_their_recipe() -> None:
    info = get_model(MODEL)
    assert info.bundled and info.family == "sd15" and info.default_size == 64
    folder = model_folder()
    assert (folder / "model_index.json").exists()
    weights = list(folder.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    assert sum(w.stat().st_size for w in weights) <= 20 * 1024 * 1024
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "python -m farm.demo_model.train --out farm/models/demo-shapes" in readme
    assert "seed: " in readme and "training time: " in readme and "toy" in readme


def test_loads_with_from_pretrained_and_draws_a_prompt() -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from farm.pipelines import schedulers

    pipe = StableDiffusionPipeline.from_pretrained(str(model_folder()))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    assert not pipe.scheduler.config.get("clip_sample", False)  # DDIM built from it must not clip latents
    ids = pipe.tokenizer(CHECK_PROMPTS[7], truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    assert ids[-1] == pipe.tokenizer.eos_token_id  # the longest check prompt fits untruncated
    pipe.scheduler = schedulers.make("ddim", pipe.scheduler.config)
    image = pipe("a red circle on a blue background", num_inference_steps=10, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    reading = read_image((image * 255).round().astype(np.uint8))
    assert (reading.colour, reading.background) == ("red", "blue")


# ----- the training data --------------------------------------------------------------------------


def test_generated_images_show_what_their_prompts_say() -> None:
    images, prompts, scenes = data.make_batch(np.random.default_rng(7), 300)
    assert images.shape == (300, 64, 64, 3) and images.dtype == np.uint8
    b = data.BORDER
    for image, prompt, scene in zip(images, prompts, scenes):
        words = prompt.replace(",", "").split()
        named = [w for w in words if w in data.COLOURS or w in data.SHAPES]
        assert named == [scene.colour, scene.shape, scene.background], prompt
        assert scene.colour != scene.background
        ring = np.concatenate([image[:b].reshape(-1, 3), image[-b:].reshape(-1, 3),
                               image[:, :b].reshape(-1, 3), image[:, -b:].reshape(-1, 3)])
        assert (ring == data.COLOURS[scene.background]).all(), "the shape touches the border"
        assert (image == data.COLOURS[scene.colour]).all(-1).sum() >= 200  # a shape, not a speck
        assert read_image(image).matches(scene.shape, scene.colour, scene.background, check_shape=True), prompt
    assert {s.shape for s in scenes} == set(data.SHAPES)
    assert {s.colour for s in scenes} == {s.background for s in scenes} == set(data.COLOURS)
    assert len(set(prompts)) > 100


def test_generator_is_reproducible_from_its_seed_and_drops_prompts_for_guidance() -> None:
    a = data.make_batch(np.random.default_rng(3), 50, uncond_rate=0.2)
    b = data.make_batch(np.random.default_rng(3), 50, uncond_rate=0.2)
    c = data.make_batch(np.random.default_rng(4), 50, uncond_rate=0.2)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])
    assert 0 < a[1].count("") < 25
    assert data.make_batch(np.random.default_rng(3), 5, uncond_rate=1.0)[1] == [""] * 5


def test_check_prompts_cover_every_shape_and_colour_and_neighbours_differ() -> None:
    facts = [parse_prompt(p) for p in CHECK_PROMPTS]
    assert {f[0] for f in facts} == set(data.SHAPES)
    assert {f[1] for f in facts} == {f[2] for f in facts} == set(data.COLOURS)
    for (_, c1, b1), (_, c2, b2) in zip(facts, facts[1:] + facts[:1]):
        assert c1 != c2 and b1 != b2
    assert all(p == data.prompt_for(*f) for p, f in zip(CHECK_PROMPTS, facts))


def test_the_check_fails_images_judged_against_the_wrong_prompts() -> None:
    scenes = [data.random_scene(np.random.default_rng(i), parse_prompt(p)) for i, p in enumerate(CHECK_PROMPTS)]
    images = [data.render(s) for s in scenes]
    seeds = [0] * len(images)
    assert accuracy(judge(CHECK_PROMPTS, seeds, images)) == 1.0
    assert accuracy(judge(CHECK_PROMPTS[1:] + CHECK_PROMPTS[:1], seeds, images)) == 0.0


# ----- through the farm ---------------------------------------------------------------------------


class Relay:
    """The farm's own executor, except that every other segment goes to the next node: each shard's
    checkpoints cross between processes (Ray actors of different nodes), not only within one. The
    coordinator credits work to the node it sent it to, so `ran` records where each segment really
    ran. With a `rewrite` it also alters segment tasks on their way, a stand-in for a farm with a bug
    in how it hands prompts around."""

    def __init__(self, inner: object, rewrite: Callable[[SegmentTask], SegmentTask] | None = None) -> None:
        self.inner = inner
        self.names = [n.name for n in inner.nodes()]
        self.rewrite = rewrite
        self.tampered = 0
        self.ran: dict[str, set[str]] = {}  # shard id -> the nodes that ran its segments

    def submit(self, node: str, task: SegmentTask) -> object:
        if task.index % 2 == 1:
            node = self.names[(self.names.index(node) + 1) % len(self.names)]
        self.ran.setdefault(task.shard_id, set()).add(node)
        if self.rewrite is not None:
            new = self.rewrite(task)
            self.tampered += new is not task
            task = new
        return self.inner.submit(node, task)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def reverse_rows(raw: RawTensor, batch: int) -> RawTensor:
    """The shard's samples' rows in reverse order (within each half of a guided [negative, positive] pair)."""
    arr = np.frombuffer(raw.data, dtype=np.dtype(raw.dtype)).reshape(raw.shape)
    halves = arr.shape[0] // batch
    flipped = np.flip(arr.reshape(halves, batch, *arr.shape[1:]), axis=1).reshape(arr.shape)
    return RawTensor(raw.dtype, raw.shape, np.ascontiguousarray(flipped).tobytes())


def swap_embeddings_at_first_handoff(task: SegmentTask) -> SegmentTask:
    """The bug: the first checkpoint handed between nodes has its prompt embeddings in reverse order."""
    if task.index != 1 or task.checkpoint is None or len({s.prompt for s in task.samples}) < 2:
        return task
    cp = wire.decode(task.checkpoint)
    cond = {k: reverse_rows(v, len(task.samples)) for k, v in cp.conditioning.items()}
    return dataclasses.replace(task, checkpoint=wire.encode(dataclasses.replace(cp, conditioning=cond)))


def swap_prompts_at_encode(task: SegmentTask) -> SegmentTask:
    """The bug: the node that encodes a shard gets its samples' prompts in reverse order."""
    if task.index != 0 or len({s.prompt for s in task.samples}) < 2:
        return task
    prompts = [s.prompt for s in reversed(task.samples)]
    samples = tuple(dataclasses.replace(s, prompt=p) for s, p in zip(task.samples, prompts))
    return dataclasses.replace(task, samples=samples)


def render_on_farm(executor: object, out: Path, max_segment_steps: int) -> list[Path]:
    from farm.contracts.domain import JobStatus
    from farm.runtime.coordinator import Coordinator

    job = make_job(model=MODEL, prompts=list(CHECK_PROMPTS), seeds=SEEDS, steps=CHECK_STEPS, sampler=CHECK_SAMPLER,
                   guidance=CHECK_GUIDANCE)
    from waiting import ready

    coordinator = Coordinator(executor, PngWriter(out), max_segment_steps=max_segment_steps)
    ready(coordinator)
    view = coordinator.render(job)
    assert view.status == JobStatus.DONE, view.error
    outputs = sorted(out.rglob("*.png"))
    assert len(outputs) == len(CHECK_PROMPTS) * SEEDS
    return outputs


def check_outputs(outputs: list[Path]) -> list[Verdict]:
    """Each PNG against the prompt its own provenance names: the check a user would make by eye."""
    metas = [read_provenance(p) for p in outputs]
    images = []
    for p in outputs:
        with Image.open(p) as im:
            images.append(np.asarray(im.convert("RGB")))
    return judge([m["prompt"] for m in metas], [m["seed"] for m in metas], images)


@pytest.fixture(scope="module")
def honest_relay(embedded: object) -> Relay:
    return Relay(embedded)


@pytest.fixture(scope="module")
def honest_run(honest_relay: Relay, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return render_on_farm(honest_relay, tmp_path_factory.mktemp("demo-shapes"), max_segment_steps=4)


@pytest.mark.slow
def test_farm_renders_follow_their_prompts(honest_run: list[Path], honest_relay: Relay) -> None:
    metas = [read_provenance(p) for p in honest_run]
    assert all(m["model"] == MODEL and len(m["segments"]) >= 3 for m in metas)
    moved = honest_relay.ran and all(len(nodes) >= 2 for nodes in honest_relay.ran.values())
    assert moved, "a shard stayed on one node"
    assert len({seg["node"] for m in metas for seg in m["segments"]}) == 3
    verdicts = check_outputs(honest_run)
    print(report(verdicts))
    assert accuracy(verdicts) >= REQUIRED, report(verdicts)


@pytest.mark.slow
@pytest.mark.parametrize("bug", [swap_embeddings_at_first_handoff, swap_prompts_at_encode], ids=lambda f: f.__name__)
def test_the_same_check_catches_a_farm_that_swaps_prompts_between_samples(
    bug: Callable[[SegmentTask], SegmentTask], embedded: object, honest_run: list[Path], tmp_path: Path
) -> None:
    buggy = Relay(embedded, bug)
    outputs = render_on_farm(buggy, tmp_path, max_segment_steps=4)
    assert buggy.tampered >= 2, "no shard had two samples to swap"
    verdicts = check_outputs(outputs)
    print(report(verdicts))
    assert accuracy(verdicts) < REQUIRED
    assert accuracy(verdicts) <= accuracy(check_outputs(honest_run)) - 0.4


# ----- the training script ------------------------------------------------------------------------


@pytest.mark.slow
def test_training_script_runs_and_is_reproducible(tmp_path: Path) -> None:
    """A few steps of each stage (not the real training): the script writes a loadable pipeline and
    its README, and the same seed gives the same weights."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from farm.demo_model import train

    args = ["--vae-steps", "2", "--vae-batch", "2", "--text-steps", "2", "--text-batch", "4", "--latents", "16",
            "--unet-steps", "2", "--unet-batch", "4", "--seed", "5", "--no-evaluate"]
    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            assert train.main(["--out", str(tmp_path / name), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        a, b = load_file(tmp_path / "a" / part), load_file(tmp_path / "b" / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    readme = (tmp_path / "a" / "README.md").read_text(encoding="utf-8")
    assert "--seed 5" in readme and "seed: 5" in readme
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "a"))
    assert pipe.tokenizer.model_max_length == train.MAX_PROMPT_TOKENS
