"""A farm behind the HTTP API for tests, wired as `farm head` wires it: the real coordinator on the
embedded Ray farm behind a metered executor, the head's telemetry wrapper, metrics, uvicorn on loopback."""

from __future__ import annotations

from pathlib import Path

import webuiapi

from farm.api.agent_links import AgentLinks, NodesWithTelemetry
from farm.api.http import make_app
from farm.api.http_server import HttpServer
from farm.api.metrics import FarmMetrics
from farm.runtime.coordinator import Coordinator
from farm.runtime.executor import RayExecutor
from farm.runtime.metered import MeteredExecutor
from farm.runtime.outputs import PngWriter

PROMPT = "a red circle on a blue background"


class Served:
    """A farm behind the HTTP API, as `farm head` serves it (metered executor, metrics, telemetry wrapper)."""

    def __init__(self, executor: RayExecutor, out: Path) -> None:
        self.out = out
        self.metrics = FarmMetrics()
        self.coordinator = Coordinator(MeteredExecutor(executor, self.metrics.work), PngWriter(out),
                                       max_segment_steps=3)
        self.service = NodesWithTelemetry(self.coordinator, AgentLinks(self.coordinator))
        self.metrics.watch(self.service)
        app = make_app(self.service, authenticate=None, require_credentials=False, metrics=self.metrics.render)
        self.http = HttpServer(app, "127.0.0.1", 0)
        self.coordinator.start()
        self.http.start()
        self.api = webuiapi.WebUIApi(host="127.0.0.1", port=self.http.port)

    def stop(self) -> None:
        self.http.stop()
        self.coordinator.stop()
