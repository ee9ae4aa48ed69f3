"""The multi-PC commands of `farm`: `head`, `join`, and the client commands that talk to a running
head over `FarmControl` (`submit`, `fetch`, `jobs`, `nodes`, `cancel`, `node pause|resume|drain|remove`,
`token rotate`). Node commands live under `node` because `farm resume` already finishes a stopped
embedded run.

Which head: `--head HOST:PORT --token T` (or FARM_HEAD / FARM_TOKEN), else the head running on this
PC (its port and token are in FARM_HOME/head). Every failure is a `FarmError`, which `farm.cli.main.main`
prints as one line with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from farm.contracts.control import JobView, NodeView, OwnerPolicy
from farm.contracts.domain import JobStatus
from farm.contracts.errors import FarmError, InvalidInput
from farm.core.transitions import ENDED

DEFAULT_HEAD_PORT = 7070


def farm_home() -> Path:
    """Per-user state (the same rule as the model cache: FARM_HOME, else ~/.cache/farm)."""
    return Path(os.environ.get("FARM_HOME") or Path.home() / ".cache" / "farm")


def default_name() -> str:
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in socket.gethostname())
    return cleaned.strip("-")[:64] or "pc"


def _ray_executable() -> str:
    """The `ray` of this Python environment (a venv's bin is often not on PATH under systemd)."""
    sibling = Path(sys.executable).with_name("ray.exe" if platform.system() == "Windows" else "ray")
    return str(sibling) if sibling.exists() else "ray"


def _owner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="this PC's name in the farm (default: its host name)")
    p.add_argument("--simulate-gpu", type=float, action="append", metavar="GIB",
                   help="declare a simulated GPU of this many GiB (repeatable) instead of probing NVIDIA GPUs")
    p.add_argument("--vram-cap", type=float, default=None, metavar="GIB", help="owner's rule: at most this much VRAM")
    p.add_argument("--active-hours", default="", metavar="HH:MM-HH:MM", help="owner's rule: work only then")
    p.add_argument("--pause-program", action="append", default=[], metavar="NAME",
                   help="owner's rule: pause while this program (a game) runs (repeatable)")
    p.add_argument("--allow-other-gpu-programs", action="store_true",
                   help="owner's rule: do not pause when another program uses the GPU")
    p.add_argument("--ray-ports-from", type=int, default=None, metavar="PORT",
                   help="pin Ray's ports on this PC to PORT..PORT+99 (one range to open in a firewall)")


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", default=os.environ.get("FARM_HEAD"), metavar="HOST:PORT",
                   help="the head to talk to (default: FARM_HEAD, else the head on this PC)")
    p.add_argument("--token", default=os.environ.get("FARM_TOKEN"), help="the farm token (default: FARM_TOKEN)")


def add_cluster_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    head = sub.add_parser("head", help="make this PC the head of a farm and print the `farm join` command")
    head.add_argument("--advertise", default=None, metavar="HOST",
                      help="the address other PCs reach this one at (default: this PC's LAN address, the "
                           "source of its default route; without one, pass it: a loopback address is "
                           "advertised only when given here)")
    head.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    head.add_argument("--port", type=int, default=DEFAULT_HEAD_PORT, help="FarmControl port (default 7070)")
    head.add_argument("--ray-port", type=int, default=6379, help="Ray head port (default 6379)")
    head.add_argument("--out", type=Path, default=Path("renders"), help="folder for outputs (default: renders)")
    head.add_argument("--state", type=Path, default=None, help="folder for the durable queue (default: in memory)")
    head.add_argument("--http", default="127.0.0.1:7860", metavar="ADDR:PORT",
                      help="the AUTOMATIC1111-compatible API and /metrics (default 127.0.0.1:7860; off: none); "
                           "off loopback it needs the farm token")
    head.add_argument("--http-tls", action="store_true", help="serve the HTTP API over TLS with the head's certificate")
    _owner_args(head)
    head.set_defaults(func=_head)

    join = sub.add_parser("join", help="join this PC to a farm: run its agent and its Ray worker")
    join.add_argument("head_address", metavar="HEAD", help="the head, HOST or HOST:PORT")
    join.add_argument("--token", default=os.environ.get("FARM_TOKEN"),
                      help="the farm token that `farm head` printed (default: FARM_TOKEN, which keeps it out of `ps`)")
    join.add_argument("--listen", default="0.0.0.0:7071", help="where this PC's agent listens (default 0.0.0.0:7071)")
    join.add_argument("--advertise", default="", metavar="HOST",
                      help="the address the head reaches this PC at (default: as the head sees it)")
    join.add_argument("--ray-wrapper", default="", metavar="CMD",
                      help='run `ray start` through this, e.g. "wsl.exe --" on Windows (default on Windows)')
    _owner_args(join)
    join.set_defaults(func=_join)

    submit = sub.add_parser("submit", help="queue a TOML job file on the head and follow it")
    submit.add_argument("job_file", type=Path)
    submit.add_argument("--detach", action="store_true", help="print the job id and return at once")
    submit.add_argument("--out", type=Path, default=Path("renders"),
                        help="save the outputs on this PC under DIR/<job id>/ (default: renders)")
    _client_args(submit)
    submit.set_defaults(func=_submit)

    fetch = sub.add_parser("fetch", help="save a job's outputs from the head on this PC")
    fetch.add_argument("job_id", metavar="JOB")
    fetch.add_argument("--out", type=Path, default=Path("renders"),
                       help="save them under DIR/<job id>/ (default: renders)")
    _client_args(fetch)
    fetch.set_defaults(func=_fetch)

    for name, what, func in (("jobs", "the head's jobs", _jobs), ("nodes", "the head's nodes", _nodes)):
        p = sub.add_parser(name, help=f"list {what}")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        _client_args(p)
        p.set_defaults(func=func)

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    _client_args(cancel)
    cancel.set_defaults(func=lambda a: _simple(a, lambda c: c.cancel_job(a.job_id), f"cancelled {a.job_id}"))

    token = sub.add_parser("token", help="manage the farm token")
    token_sub = token.add_subparsers(dest="token_command", required=True, parser_class=type(token))
    rotate = token_sub.add_parser("rotate", help="replace the farm token (joined PCs keep working)")
    _client_args(rotate)
    rotate.set_defaults(func=_rotate)

    node = sub.add_parser("node", help="pause, resume, drain or remove a node")
    node_sub = node.add_subparsers(dest="node_command", required=True, parser_class=type(node))
    for verb, doing in (("pause", "pause a node: its segment checkpoints at the next step and it takes no work"),
                        ("resume", "resume a paused or draining node"),
                        ("drain", "drain a node: it finishes its segment, then takes no work")):
        p = node_sub.add_parser(verb, help=doing)
        p.add_argument("name", metavar="NODE")
        _client_args(p)
        p.set_defaults(func=lambda a, verb=verb: _simple(a, lambda c: getattr(c, f"{verb}_node")(a.name),
                                                          f"{a.name}: {verb} asked"))
    remove = node_sub.add_parser("remove", help="remove a PC: it drains and its credentials stop working")
    remove.add_argument("name", metavar="NAME")
    _client_args(remove)
    remove.set_defaults(func=lambda a: _simple(a, lambda c: c.remove_node(a.name), f"removed {a.name}"))


# ----- the head and a joining PC ---------------------------------------------------------------

def _policy(args: argparse.Namespace) -> OwnerPolicy:
    from node.policy import validate

    return validate(OwnerPolicy(vram_cap_gib=args.vram_cap, active_hours=args.active_hours,
                                pause_programs=tuple(args.pause_program),
                                pause_on_other_gpu_process=not args.allow_other_gpu_programs))


def _lan_address() -> str:
    """This PC's address on the LAN: the source address of a route outwards (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        return address == "localhost"


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _serve_until_stopped(start, stop) -> None:  # type: ignore[no-untyped-def]
    """Run `start`, wait for Ctrl-C or SIGTERM (systemd), and always run `stop`, even when the
    signal comes while `start` is still starting Ray, so that no child process is left behind."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        start()
        signal.signal(signal.SIGTERM, _interrupt)  # again: ray.init installs its own, which skips `stop`
        threading.Event().wait()
    finally:
        stop()


def _head(args: argparse.Namespace) -> int:
    from farm.api.convert import node_name
    from farm.api.http_server import needs_credentials, parse_http
    from farm.cli.head import Head, HeadConfig
    from node.probe import detect_gpus

    http = parse_http(args.http)
    if args.http_tls and http is None:
        raise InvalidInput("--http-tls", "needs the HTTP API on: drop --http off")
    advertise = args.advertise or _lan_address()
    if not args.advertise and _is_loopback(advertise):
        raise InvalidInput("--advertise", f"found no LAN address (no default route), only {advertise}, which "
                                          "other PCs cannot reach: pass --advertise ADDRESS (this PC's LAN "
                                          "address), or --advertise 127.0.0.1 for a farm of this PC alone")
    config = HeadConfig(home=farm_home(), name=node_name("--name", args.name or default_name()),
                        advertise=advertise, bind=args.bind, port=args.port,
                        ray_port=args.ray_port, out=args.out, state=args.state, policy=_policy(args),
                        ray=_ray_executable(), ray_ports_from=args.ray_ports_from, http=http,
                        http_tls=args.http_tls)
    head = Head(config, detect_gpus(args.simulate_gpu))

    def start() -> None:
        head.start()
        print(f"farm head {config.name} serving on port {head.port}; outputs in {config.out}", flush=True)
        if head.http is not None:
            print(f"A1111-compatible API and Prometheus metrics on {head.http.url}"
                  + (" (the farm token as password or Bearer token)" if needs_credentials(head.http.host) else ""),
                  flush=True)
            if needs_credentials(head.http.host) and not args.http_tls:
                print("warning: the HTTP API is off loopback without TLS: its token crosses the LAN in clear "
                      "(add --http-tls)", flush=True)
        print(f"advertising {config.advertise} (FarmControl port {head.port}, Ray port {config.ray_port}) "
              "to the other PCs; on each of them run:", flush=True)
        print(f"  {head.join_command()}", flush=True)

    _serve_until_stopped(start, head.stop)
    return 0


def _join(args: argparse.Namespace) -> int:
    from node.join import JoinConfig, JoinedNode
    from node.probe import detect_gpus

    if not args.token:
        raise InvalidInput("--token", "is required: the token from the `farm join` line that `farm head` printed")
    wrapper = tuple(shlex.split(args.ray_wrapper)) or (("wsl.exe", "--") if platform.system() == "Windows" else ())
    config = JoinConfig(head=args.head_address, token=args.token, name=args.name or default_name(), home=farm_home(),
                        listen=args.listen, advertise=args.advertise, policy=_policy(args), wrapper=wrapper,
                        ray="ray" if wrapper else _ray_executable(), ray_ports_from=args.ray_ports_from)
    node = JoinedNode(config, detect_gpus(args.simulate_gpu))

    def start() -> None:
        node.start()
        print(f"joined {args.head_address} as {', '.join(node.node_names)}; agent on {node.agent_address}", flush=True)

    _serve_until_stopped(start, node.stop)
    return 0


# ----- client commands -------------------------------------------------------------------------

def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """A `FarmClient` for --head/--token, or for the head running on this PC."""
    from farm.api.control_client import FarmClient, open_channel, split_address
    from farm.cluster.pki import fetch_pinned_cert, pin
    from farm.cluster.tokens import pin_of

    local = farm_home() / "head"
    if args.head:
        if not args.token:
            raise InvalidInput("--token", "is required with --head (or set FARM_TOKEN)")
        host, port = split_address(args.head, DEFAULT_HEAD_PORT)
        expected = pin_of(args.token)
        local_cert = local / "head.pem"
        if local_cert.exists() and pin(local_cert.read_bytes()) == expected:
            roots = local_cert.read_bytes()
        else:
            roots = fetch_pinned_cert(host, port, expected)
        return FarmClient(open_channel(host, port, roots), args.token, where=f"the head at {host}:{port}")
    port_file = local / "control.port"
    if not port_file.exists():
        raise FarmError("no head to talk to: pass --head HOST:PORT --token T (or set FARM_HEAD and FARM_TOKEN), "
                        "or run `farm head` on this PC")
    port = int(port_file.read_text())
    token = args.token or (local / "token").read_text().strip()
    return FarmClient(open_channel("127.0.0.1", port, (local / "head.pem").read_bytes()), token,
                      where=f"the head on this PC (port {port})")


def _simple(args: argparse.Namespace, action, done: str) -> int:  # type: ignore[no-untyped-def]
    client = connect(args)
    try:
        action(client)
    finally:
        client.close()
    print(done)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    client = connect(args)
    try:
        token = client.rotate_token()
    finally:
        client.close()
    print(token)
    return 0


def _job_row(j: JobView) -> dict[str, object]:
    return {"id": j.id, "status": str(j.status), "owner": j.spec.owner, "model": j.spec.model,
            "priority": j.spec.priority, "samples": f"{j.samples_done}/{j.samples_total}",
            "progress": round(j.progress, 3), "position": j.position, "error": j.error}


def _node_row(n: NodeView) -> dict[str, object]:
    return {"name": n.info.name, "gpu": n.info.gpu, "vram_gib": n.info.vram_gib, "status": str(n.status),
            "vram_used_gib": round(n.vram_used_gib, 2), "utilization": round(n.utilization, 2),
            "temperature_c": n.temperature_c, "segment": n.segment, "reason": n.pause_reason}


def _print_rows(rows: list[dict[str, object]], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console().print(table)


def _jobs(args: argparse.Namespace) -> int:
    client = connect(args)
    try:
        rows = [_job_row(j) for j in client.list_jobs()]
    finally:
        client.close()
    _print_rows(rows, ["id", "status", "owner", "model", "priority", "samples", "position", "error"], args.json, "jobs")
    return 0


def _nodes(args: argparse.Namespace) -> int:
    client = connect(args)
    try:
        rows = [_node_row(n) for n in client.list_nodes()]
    finally:
        client.close()
    _print_rows(rows, ["name", "gpu", "vram_gib", "status", "vram_used_gib", "utilization", "temperature_c",
                       "segment", "reason"], args.json, "nodes")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from farm.api.downloads import save_outputs
    from farm.jobs.jobspec import load_job_file

    spec = load_job_file(args.job_file)  # checked here first: a typo never reaches the head
    client = connect(args)
    try:
        job_id = client.submit(spec)
        if args.detach:
            print(job_id)
            return 0
        view = _follow(client, job_id)
        saved = save_outputs(client, view, args.out)
    finally:
        client.close()
    print(f"{job_id} {view.status}: {view.samples_done}/{view.samples_total} samples"
          + (f" ({view.error})" if view.error else ""))
    for path in saved:
        print(path)
    return 0 if view.status == JobStatus.DONE else 1


def _fetch(args: argparse.Namespace) -> int:
    """The outputs written so far (all of them once the job is done), as paths on this PC."""
    from farm.api.convert import job_id
    from farm.api.downloads import save_outputs

    client = connect(args)
    try:
        view = client.get_job(job_id(args.job_id))
        saved = save_outputs(client, view, args.out)
    finally:
        client.close()
    if view.status != JobStatus.DONE:
        print(f"farm: {view.id} is {view.status}: saved {len(saved)} of {view.samples_total} outputs",
              file=sys.stderr)
    for path in saved:
        print(path)
    return 0


def _follow(client, job_id: str, poll_s: float = 0.5) -> JobView:  # type: ignore[no-untyped-def]
    """A progress bar (on stderr) in sample-steps until the job is done, failed or cancelled."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=Console(stderr=True)) as progress:
        view = client.get_job(job_id)
        bar = progress.add_task(f"job {job_id}", total=view.steps_total, status=str(view.status))
        while view.status not in ENDED:
            time.sleep(poll_s)
            view = client.get_job(job_id)
            progress.update(bar, completed=view.steps_done, status=str(view.status))
    return view

