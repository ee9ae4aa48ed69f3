"""`farm` command line: the entry point that wires planner, coordinator, Ray and outputs together.

Every user error ends as one line on stderr naming the field and its allowed range, with exit code
2, before anything starts; no traceback reaches the user unless FARM_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from farm.cli.cluster import add_cluster_commands
from farm.contracts.domain import JobSpec, NodeInfo
from farm.contracts.errors import FarmError, InvalidInput
from farm.contracts.text import safe_text
from farm.jobs.init_image import read_image
from farm.jobs.jobspec import load_job, make_job
from farm.jobs.loras import parse_lora_flag
from tui.cli import add_tui_command


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (argparse's own adds a usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("renders"), help="folder for outputs (default: renders)")
    p.add_argument("--json", action="store_true", help="print one JSON object per job on stdout instead of a table")
    p.add_argument("--state", type=Path, default=None,
                   help="keep the queue in this folder (SQLite + checkpoints): "
                        "a stopped run resumes with `farm resume`")
    p.add_argument("--simulate", type=_simulate_sizes, default=None, metavar="GIB,GIB,...",
                   help="run on simulated nodes of these VRAM sizes (CPU) instead of this PC's NVIDIA GPUs "
                        "(default: one node per GPU; 8,12,24 where the PC has none)")


def _simulate_sizes(text: str) -> tuple[float, ...]:
    """`--simulate 8,12,24`: 1 to 64 simulated nodes, each from 1 to 4096 GiB."""
    try:
        sizes = tuple(float(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not 1 <= len(sizes) <= 64 or not all(1 <= v <= 4096 for v in sizes):
        raise argparse.ArgumentTypeError(f"give 1 to 64 comma-separated VRAM sizes, each from 1 to 4096 GiB "
                                         f"(e.g. 8,12,24), got {text!r}")
    return sizes


def local_nodes(simulate: tuple[float, ...] | None = None) -> list[NodeInfo]:
    """The embedded farm's nodes: simulated ones of these sizes when asked; else one node per NVIDIA
    GPU of this PC (its budget from NVML, its actor pinned to it), named like a joined PC's; else,
    on a PC without one, the demo's simulated 8, 12 and 24 GiB nodes."""
    from node.simulated import DEMO_CARDS, simulated_nodes

    if simulate:
        speeds = dict(DEMO_CARDS)
        return simulated_nodes([(v, speeds.get(v, 1.0)) for v in simulate])
    from farm.cli.cluster import default_name
    from farm.cluster.membership import nodes_for
    from farm.contracts.control import OwnerPolicy
    from node.probe import HostProbe, NvmlGpus

    try:
        gpus = NvmlGpus()
    except (ImportError, RuntimeError):  # no nvidia-ml-py, no driver, or no GPU
        return simulated_nodes()
    return list(nodes_for(default_name(), HostProbe(gpus).hardware(), OwnerPolicy()))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="farm", description="A render farm for home GPUs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="render the built-in demo job on an embedded farm of this PC's GPUs "
                                       "(3 simulated nodes where it has none)")
    _common(demo)
    demo.add_argument("--tui", action="store_true", help="watch and steer it in the terminal dashboard")

    render = sub.add_parser("render", help="render prompts on the embedded farm")
    render.add_argument("prompts", nargs="*", help="one or more prompts")
    render.add_argument("--model", default="demo-shapes",
                        help="a built-in name, a diffusers folder, or a downloaded Hugging Face id")
    render.add_argument("--seeds", type=int, default=1, help="seeds per prompt (default 1)")
    render.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    render.add_argument("--steps", type=int, default=None)
    render.add_argument("--width", type=int, default=None)
    render.add_argument("--height", type=int, default=None)
    render.add_argument("--guidance", type=float, default=None, help="default: the model's own")
    render.add_argument("--sampler", default=None, help="default: the model's own")
    render.add_argument("--negative", default="", help="negative prompt")
    render.add_argument("--lora", action="append", default=[], metavar="NAME:WEIGHT",
                        help="apply a LoRA adapter at this weight (-4 to 4; NAME alone: 1); repeatable")
    render.add_argument("--init-image", type=Path, default=None, metavar="PATH",
                        help="img2img (sd15, sdxl, flux): start from this image, resized to --width x --height; "
                             "image-to-video (ltxv, wan I2V, hunyuanvideo15 I2V): the video's first frame")
    render.add_argument("--strength", type=float, default=None,
                        help="img2img: how much of the init image is re-noised, in (0, 1] (default 0.75); "
                             "not for image-to-video")
    _common(render)

    run = sub.add_parser("run", help="render a TOML job file on the embedded farm")
    run.add_argument("job_file", type=Path)
    _common(run)

    resume = sub.add_parser("resume", help="finish the jobs a stopped run left in --state, from their checkpoints")
    _common(resume)
    # Other modules add their commands here; each sets `func(args) -> exit code`.
    add_cluster_commands(sub)
    add_tui_command(sub)
    return parser


def _job_from_args(args: argparse.Namespace) -> JobSpec | None:
    return _job_and_image(args)[0]


def _job_and_image(args: argparse.Namespace) -> tuple[JobSpec | None, bytes | None]:
    """The job the command line asks for, and its init image's bytes (None without one)."""
    if args.command == "resume":
        if args.state is None:
            raise InvalidInput("--state", "give the folder of the stopped run's queue")
        return None, None
    if args.command == "demo":
        from farm.cli.demo import demo_job

        return demo_job(), None
    if args.command == "run":
        return load_job(args.job_file)
    if not args.prompts:
        raise InvalidInput("prompts", "give 1 to 10000 prompts, e.g. farm render \"a red circle\"")
    image = read_image(args.init_image) if args.init_image is not None else None
    return make_job(
        model=args.model, prompts=args.prompts, seeds=args.seeds, seed=args.seed, steps=args.steps,
        width=args.width, height=args.height, guidance=args.guidance, sampler=args.sampler,
        negative_prompt=args.negative, loras=[parse_lora_flag(text) for text in args.lora],
        init_image=image, strength=args.strength,
    ), image


def _execute(args: argparse.Namespace) -> int:
    if hasattr(args, "func"):  # commands registered by other modules (cluster, dashboard)
        return args.func(args)
    job, image = _job_and_image(args)  # every check runs before any process starts
    from farm.cli.embedded import render_embedded
    from farm.cli.progress import JobProgress
    from farm.cli.summary import print_summary, result_json

    nodes = local_nodes(args.simulate)
    if getattr(args, "tui", False):
        from farm.cli.embedded import dashboard_embedded

        views = dashboard_embedded(job, nodes, args.out, state=args.state, init_image=image)
    else:
        with JobProgress() as progress:
            views = render_embedded(job, nodes, args.out, progress, state=args.state, init_image=image)
    if not views:
        print("farm: nothing to resume: every job in the store is finished", file=sys.stderr)
    for view in views:
        if args.json:
            print(json.dumps(result_json(view), indent=None))
        else:
            print_summary(view, nodes)
    return 0 if all(v.status == "done" for v in views) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _execute(args)
    except FarmError as e:
        print(f"farm: {safe_text(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("farm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence: one line, not a traceback
        if os.environ.get("FARM_DEBUG"):
            traceback.print_exc()
        print(f"farm: internal error: {type(e).__name__}: {safe_text(e)} (set FARM_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
