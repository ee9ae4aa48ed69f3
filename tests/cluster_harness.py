"""Pieces shared by the cluster tests: a head served in process over TLS with tokens (a FakeFarm
behind the real FarmControl server and membership), and a PC whose process list a test writes."""

from __future__ import annotations

import time
from pathlib import Path

from fake_farm import FakeFarm

from farm.api.control_client import FarmClient, open_channel
from farm.api.control_server import serve_control
from farm.cluster.credentials import HeadCredentials
from farm.cluster.membership import Membership
from farm.contracts.hardware import GpuSample, Hardware, ProcessSample, Telemetry
from node.probe import SimulatedGpus

HARDWARE = Hardware("pc3", "Linux", 8, 32.0, (GpuSample(0, "RTX 4090", 24.0), GpuSample(1, "RTX 3060", 12.0)))


class Head:
    """A head served in process: FakeFarm behind the real FarmControl server, TLS, tokens, membership."""

    def __init__(self, folder: Path) -> None:
        self.farm = FakeFarm()
        self.creds = HeadCredentials.load_or_create(folder)
        self.joined: list[str] = []
        self.removed: list[str] = []
        self.members = Membership(folder, self.creds.ca, self.creds.tokens, "10.0.0.1:6379", "ray-secret",
                                  on_join=lambda m: self.joined.append(m.name),
                                  on_remove=lambda m: self.removed.append(m.name))
        self.server, self.port = serve_control(self.farm, "127.0.0.1:0", tls=self.creds.tls,
                                               tokens=self.creds.tokens, membership=self.members)

    def client(self, token: str | None = "", roots: bytes | None | str = "") -> FarmClient:
        roots_pem = self.creds.tls.cert_pem if roots == "" else roots
        return FarmClient(open_channel("127.0.0.1", self.port, roots_pem),  # type: ignore[arg-type]
                          self.creds.tokens.admin_token if token == "" else token, timeout=5)


class FakeProbe:
    """A PC whose process list the test writes."""

    def __init__(self) -> None:
        self.processes: list[ProcessSample] = []
        self.gpus = SimulatedGpus([12.0]).gpus()

    def hardware(self) -> Hardware:
        return Hardware("pc1", "Linux test", 4, 16.0, self.gpus)

    def telemetry(self, every_process: bool = True) -> Telemetry:
        shown = self.processes if every_process else [p for p in self.processes if p.uses_gpu]
        return Telemetry(time.time(), self.gpus, 5.0, 4.0, 16.0, tuple(shown))
