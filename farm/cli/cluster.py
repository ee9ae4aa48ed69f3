"""The multi-PC commands of `farm`: `head`, `join`, and the client commands that talk to a running
head over `FarmControl` (`submit`, `fetch`, `jobs`, `nodes`, `cancel`, `node pause|resume|drain|remove`,
`token rotate|issue`). Node commands live under `node` because `farm resume` already finishes a stopped
embedded run.

Which head: `--head HOST:PORT --token T` (or FARM_HEAD / FARM_TOKEN), else the head running on this
PC (its port and admin token are in FARM_HOME/head). Every failure is a `FarmError`, which
`farm.cli.main.main` prints as one line with a non-zero exit code (2 for a call outside the token's role).
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
from farm.contracts.text import safe_markup, safe_text
from farm.core.model_lists import parse_patterns
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
    p.add_argument("--token", default=os.environ.get("FARM_TOKEN"),
                   help="your user token, or the admin token (default: FARM_TOKEN, else the admin token of the "
                        "head on this PC)")


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
                           "off loopback it needs a user token")
    head.add_argument("--http-tls", action="store_true", help="serve the HTTP API over TLS with the head's certificate")
    _owner_args(head)
    head.set_defaults(func=_head)

    join = sub.add_parser("join", help="join this PC to a farm: run its agent and its Ray worker")
    join.add_argument("head_address", metavar="HEAD", help="the head, HOST or HOST:PORT")
    join.add_argument("--token", default=os.environ.get("FARM_TOKEN"),
                      help="the join token that `farm head` printed (default: FARM_TOKEN, which keeps it out of "
                           "`ps`; better than this option)")
    join.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                      help="read the join token from FILE instead (kept out of `ps` and of the shell's history)")
    join.add_argument("--listen", default="0.0.0.0:7071", help="where this PC's agent listens (default 0.0.0.0:7071)")
    join.add_argument("--advertise", default="", metavar="HOST",
                      help="the address the head reaches this PC at (default: as the head sees it)")
    join.add_argument("--ray-wrapper", default="", metavar="CMD",
                      help='run `ray start` through this, e.g. "wsl.exe --" on Windows (default on Windows)')
    join.add_argument("--models", default=None, metavar="PATTERNS",
                      help="owner's rule: take only models matching these comma-separated patterns (e.g. 'sd*,wan*')")
    join.add_argument("--deny-models", default=None, metavar="PATTERNS",
                      help="owner's rule: never take models matching these comma-separated patterns "
                           "(LoRA adapters match as lora:NAME, e.g. 'lora:*')")
    _owner_args(join)
    join.set_defaults(func=_join)

    submit = sub.add_parser("submit", help="queue a TOML job file on the head and follow it")
    submit.add_argument("job_file", type=Path)
    submit.add_argument("--detach", action="store_true", help="print the job id and return at once")
    submit.add_argument("--out", type=Path, default=Path("renders"),
                        help="save the outputs on this PC under DIR/<job id>/ (default: renders)")
    submit.add_argument("--init-image", type=Path, default=None, metavar="PATH",
                        help="img2img: the image the job starts from (overrides the job file's init_image)")
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
        if name == "jobs":
            rm = p.add_subparsers(dest="jobs_command", parser_class=type(p)).add_parser(
                "rm", help="remove done, failed or cancelled jobs from the queue (their output files stay)")
            rm.add_argument("job_ids", nargs="+", metavar="JOB")
            _client_args(rm)
            rm.set_defaults(func=_jobs_rm)

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    _client_args(cancel)
    cancel.set_defaults(func=lambda a: _simple(a, lambda c: c.cancel_job(a.job_id), f"cancelled {a.job_id}"))

    token = sub.add_parser("token", help="manage the join token and user tokens (admin)")
    token_sub = token.add_subparsers(dest="token_command", required=True, parser_class=type(token))
    rotate = token_sub.add_parser("rotate", help="replace the join token (joined PCs and user tokens keep working)")
    _client_args(rotate)
    rotate.set_defaults(func=lambda a: _print_token(a, lambda c: c.rotate_token()))
    issue = token_sub.add_parser("issue", help="print a token for one user (their own jobs; issuing again for "
                                               "the same user replaces it)")
    issue.add_argument("--user", required=True, metavar="NAME", help="the user: the owner of the jobs they submit")
    _client_args(issue)
    issue.set_defaults(func=lambda a: _print_token(a, lambda c: c.issue_user_token(a.user)))

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
    lists = node_sub.add_parser("models", help="set which models a PC takes (from the PC itself, or with the "
                                               "admin token); the head then never sends it other models' segments "
                                               "or files")
    lists.add_argument("name", metavar="PC")
    lists.add_argument("--allow", default="", metavar="PATTERNS",
                       help="comma-separated fnmatch patterns of the models it takes (empty: every model)")
    lists.add_argument("--deny", default="", metavar="PATTERNS", help="comma-separated patterns it never takes")
    _client_args(lists)
    lists.set_defaults(func=_node_models)
    models = sub.add_parser("models", help="list the models only the head holds: size, hash, the nodes that hold "
                                           "them, and each node's model lists")
    models.add_argument("--json", action="store_true", help="one JSON object per line")
    _client_args(models)
    models.set_defaults(func=_models)
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


def _serve_until_stopped(start, stop, rearm: threading.Event | None = None) -> None:  # type: ignore[no-untyped-def]
    """Run `start`, wait for Ctrl-C or SIGTERM (systemd), and always run `stop`, even when the
    signal comes while `start` is still starting Ray, so that no child process is left behind.
    Every ray.init installs Ray's own SIGTERM handler, which skips `stop`: ours goes back after
    `start`, and again whenever `rearm` is set (a ray.init on another thread, where Python cannot)."""
    signal.signal(signal.SIGTERM, _interrupt)
    rearm = rearm or threading.Event()
    try:
        start()
        while True:
            signal.signal(signal.SIGTERM, _interrupt)
            rearm.wait()
            rearm.clear()
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
                  + (" (a user token as password or Bearer token)" if needs_credentials(head.http.host) else ""),
                  flush=True)
            if needs_credentials(head.http.host) and not args.http_tls:
                print("warning: the HTTP API is off loopback without TLS: its token crosses the LAN in clear "
                      "(add --http-tls)", flush=True)
        print(f"admin token in {head.folder / 'admin-token'}; user tokens: farm token issue --user NAME", flush=True)
        print(f"advertising {config.advertise} (FarmControl port {head.port}, Ray port {config.ray_port}) "
              "to the other PCs; on each of them run:", flush=True)
        print(f"  {head.join_command()}", flush=True)

    _serve_until_stopped(start, head.stop, head.ray_connected)
    return 0


def _join(args: argparse.Namespace) -> int:
    from node.join import JoinConfig, JoinedNode
    from node.probe import detect_gpus

    if args.token_file is not None:
        try:
            args.token = args.token_file.read_text().strip()
        except OSError as e:
            raise InvalidInput("--token-file", f"cannot read {args.token_file}: {e.strerror}") from None
    if not args.token:
        raise InvalidInput("--token", "is required: set FARM_TOKEN to the join token of the line `farm head` "
                                      "printed (or pass --token-file)")
    wrapper = tuple(shlex.split(args.ray_wrapper)) or (("wsl.exe", "--") if platform.system() == "Windows" else ())
    allow = None if args.models is None else parse_patterns("--models", args.models)
    deny = None if args.deny_models is None else parse_patterns("--deny-models", args.deny_models)
    config = JoinConfig(head=args.head_address, token=args.token, name=args.name or default_name(), home=farm_home(),
                        listen=args.listen, advertise=args.advertise, policy=_policy(args), wrapper=wrapper,
                        ray="ray" if wrapper else _ray_executable(), ray_ports_from=args.ray_ports_from,
                        models=allow, deny_models=deny)
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
    token = args.token or (local / "admin-token").read_text().strip()
    return FarmClient(open_channel("127.0.0.1", port, (local / "head.pem").read_bytes()), token,
                      where=f"the head on this PC (port {port})")


def _models_client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The head's FarmModels: with --head/--token or the head on this PC as `connect` finds it; on a joined PC
    without them, as that PC (its node token: it may set its own model lists)."""
    from farm.api.auth import bearer
    from farm.api.control_client import open_channel, split_address
    from farm.api.models_client import HeadModels

    saved = farm_home() / "node"
    if not args.head and not (farm_home() / "head" / "control.port").exists() and (saved / "join.json").exists():
        join = json.loads((saved / "join.json").read_text())
        host, port = split_address(join["head"], DEFAULT_HEAD_PORT)
        return HeadModels(open_channel(host, port, (saved / "ca.pem").read_bytes()), bearer(join["node_token"]),
                          where=f"the head at {host}:{port}")
    return connect(args).models()


def _node_models(args: argparse.Namespace) -> int:
    allow, deny = parse_patterns("--allow", args.allow), parse_patterns("--deny", args.deny)
    head = _models_client(args)
    try:
        head.set_rules(args.name, allow, deny)
    finally:
        head.close()
    refused = " (every other model refused)" if allow else ""
    print(safe_text(f"{args.name}: takes {', '.join(allow) or 'every model'}"
                    + (f" except {', '.join(deny)}" if deny else "") + refused))
    return 0


def _models(args: argparse.Namespace) -> int:
    head = _models_client(args)
    try:
        models, nodes = head.list()
    finally:
        head.close()
    rows = [{"model": m.model, "size_gib": round(m.size / 2**30, 3), "bytes": m.size, "files": m.files,
             "revision": m.revision, "nodes": ", ".join(m.nodes)} for m in models]
    _print_rows(rows, ["model", "size_gib", "files", "revision", "nodes"], args.json, "models only the head holds")
    lists = [{"node": n.node, "stored": ", ".join(n.stored), "allow": ", ".join(n.allow) or "*",
              "deny": ", ".join(n.deny), "link_mb_s": round(n.link_bytes_per_s / 1e6, 1),
              "fetched_mb": round(n.fetched_bytes / 1e6, 1)} for n in nodes]
    if args.json:
        for row in lists:
            print(json.dumps({"node_models": row}))
    else:
        _print_rows(lists, ["node", "stored", "allow", "deny", "link_mb_s", "fetched_mb"], False, "nodes")
    return 0


def _simple(args: argparse.Namespace, action, done: str) -> int:  # type: ignore[no-untyped-def]
    client = connect(args)
    try:
        action(client)
    finally:
        client.close()
    print(safe_text(done))
    return 0


def _print_token(args: argparse.Namespace, action) -> int:  # type: ignore[no-untyped-def]
    """Print the token the head hands out (on stdout only: it is never logged)."""
    client = connect(args)
    try:
        token = action(client)
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
        table.add_row(*("" if row[c] is None else safe_markup(row[c]) for c in columns))
    Console().print(table)


def _jobs(args: argparse.Namespace) -> int:
    client = connect(args)
    try:
        rows = [_job_row(j) for j in client.list_jobs()]
    finally:
        client.close()
    _print_rows(rows, ["id", "status", "owner", "model", "priority", "samples", "position", "error"], args.json, "jobs")
    return 0


def _jobs_rm(args: argparse.Namespace) -> int:
    from farm.api.convert import job_id

    client = connect(args)
    try:
        for job in args.job_ids:
            client.forget_job(job_id(job))
            print(safe_text(f"removed {job}"))
    finally:
        client.close()
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
    from farm.jobs.jobspec import load_job_request

    # Its form is checked here (a typo never reaches the head); its model and adapters by the head,
    # which has them where this PC may not.
    request = load_job_request(args.job_file, args.init_image)
    client = connect(args)
    try:
        job_id = client.submit(request)
        if args.detach:
            print(job_id)
            return 0
        view = _follow(client, job_id)
        saved = save_outputs(client, view, args.out)
    finally:
        client.close()
    print(safe_text(f"{job_id} {view.status}: {view.samples_done}/{view.samples_total} samples"
                    + (f" ({view.error})" if view.error else "")))
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
        print(safe_text(f"farm: {view.id} is {view.status}: saved {len(saved)} of {view.samples_total} outputs"),
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
        bar = progress.add_task(safe_markup(f"job {job_id}"), total=view.steps_total, status=str(view.status))
        while view.status not in ENDED:
            time.sleep(poll_s)
            view = client.get_job(job_id)
            progress.update(bar, completed=view.steps_done, status=str(view.status))
    return view

