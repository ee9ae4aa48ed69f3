"""Serving an ASGI app (the HTTP API) with uvicorn on a thread of the head process.

The socket is bound here, before uvicorn starts, so a port in use is one clear error at start-up
and a test can ask for port 0 and learn the port. With TLS, uvicorn serves the head's own key and
certificate (the farm CA's `farm-head`), the same identity as `FarmControl`.

uvicorn's own main loop wakes ten times a second (to refresh its Date header and to look for a stop),
which is most of an idle head's HTTP cost; `QuietServer` sleeps until `stop` instead, and the Date
header is written per response.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from pathlib import Path
from typing import Any

import uvicorn

from farm.cluster.pki import is_loopback
from farm.contracts.errors import FarmError, InvalidInput

DEFAULT_HTTP = "127.0.0.1:7860"  # A1111's own default: front ends find it there
START_S = 15.0


def parse_http(value: str) -> tuple[str, int] | None:
    """`--http ADDR:PORT` (or `[v6]:PORT`), or `off` -> None."""
    if value == "off":
        return None
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidInput("--http", f"must be ADDR:PORT (e.g. {DEFAULT_HTTP} or 0.0.0.0:7860) or off, got {value!r}")
    return host, int(port)


def needs_credentials(host: str) -> bool:
    """Off loopback every request must carry a token; on loopback only this PC can call."""
    return not is_loopback(host)


Message = MutableMapping[str, Any]
Asgi = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def dated(app: Asgi) -> Asgi:
    """`app` with a `Date` header on every response, stamped when the response starts."""

    async def with_date(scope: Message, receive: Callable[[], Awaitable[Message]],
                        send: Callable[[Message], Awaitable[None]]) -> None:
        async def send_dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(b"date", formatdate(usegmt=True).encode()), *message.get("headers", [])]
            await send(message)

        await app(scope, receive, send_dated if scope["type"] == "http" else send)

    return with_date


class QuietServer(uvicorn.Server):
    """uvicorn's server without its 10 Hz tick: between requests its event loop sleeps until `stop`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()

    async def main_loop(self) -> None:
        await self.on_tick(0)  # the default headers, once
        self._loop = asyncio.get_running_loop()
        if not self.should_exit:  # `stop` sets it before it looks for the loop
            await self._stopped.wait()

    def stop(self) -> None:
        """End `main_loop` (from another thread); uvicorn then shuts down as usual."""
        self.should_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)


class HttpServer:
    """`app` served on `host:port` until `stop`; `port` is the bound one (useful with port 0)."""

    def __init__(self, app: object, host: str, port: int, tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (key file, certificate file) to serve HTTPS."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without
        # it a keep-alive client (webuiapi's session) waits 40 ms for a delayed ACK on every answer.
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as e:
            self._socket.close()
            raise FarmError(f"cannot serve HTTP on {host}:{port}: {e.strerror or e} (use --http ADDR:PORT or "
                            "--http off)") from None
        self.host, self.port = host, self._socket.getsockname()[1]
        keyfile, certfile = (str(tls[0]), str(tls[1])) if tls else (None, None)
        config = uvicorn.Config(dated(app), log_level="warning", access_log=False, ssl_keyfile=keyfile,  # type: ignore[arg-type]
                                ssl_certfile=certfile, timeout_graceful_shutdown=2, date_header=False)
        self._server = QuietServer(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="http-api", daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self._server.config.ssl_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._socket.close()
                raise FarmError(f"the HTTP API did not start on {self.host}:{self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=10)
        self._socket.close()
