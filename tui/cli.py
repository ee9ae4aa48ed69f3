"""`farm tui`: the dashboard on a head reached over gRPC `FarmControl`.

farm/cli.py calls `add_tui_command(sub)`; the subcommand's `func(args)` returns the exit code.
Textual is imported only when the command runs, so `farm --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from farm.contracts.errors import InvalidInput

if TYPE_CHECKING:
    from farm.api.control_client import FarmClient


def add_tui_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tui = sub.add_parser("tui", help="monitor the farm and steer its queue from a terminal dashboard")
    tui.add_argument("--head", metavar="HOST:PORT", help="the head's FarmControl address")
    tui.add_argument("--token", default=os.environ.get("FARM_TOKEN"),
                     help="your user token, or the admin token to steer nodes and every job (default: $FARM_TOKEN)")
    tui.add_argument("--ca", type=Path, default=None,
                     help="the head's certificate (PEM); without it only a loopback head is reachable")
    tui.set_defaults(func=run_tui)


def run_tui(args: argparse.Namespace) -> int:
    if not args.head:
        raise InvalidInput("--head", "the dashboard needs a head: farm tui --head HOST:PORT (or farm demo --tui)")
    client = connect(args.head, args.token, _read_ca(args.ca))
    try:
        from tui.app import make_app

        make_app(client, head=args.head).run()
    finally:
        client.close()
    return 0


def connect(address: str, token: str | None, roots_pem: bytes | None) -> FarmClient:
    """A FarmControl client that has answered once: an unreachable head or a refused token fails
    here, as farm's one-line error, rather than inside a blank dashboard."""
    from farm.api.control_client import FarmClient, open_channel, split_address

    host, port = split_address(address, default_port=0)
    client = FarmClient(open_channel(host, port, roots_pem), token, where=f"the head at {address}")
    try:
        client.list_nodes()
    except BaseException:
        client.close()
        raise
    return client


def _read_ca(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidInput("--ca", f"cannot read {path}: {e.strerror}") from None
