"""The agent: owner's rules driving the Ray worker (a dummy command), and every NodeAgent RPC in
process on 127.0.0.1 port 0 over TLS with a node certificate from the farm CA and the node token."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_harness import FakeProbe
from waiting import wait_until

from farm.api import convert
from farm.api.auth import bearer
from farm.api.control_client import open_channel
from farm.cluster.pki import FarmCA, TlsIdentity, new_key_and_csr, node_host
from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.hardware import ProcessSample
from node.agent import Agent
from node.agent_server import serve_agent
from node.worker import Supervisor, WorkerCommand
from protos.farm.v1 import agent_pb2, agent_pb2_grpc

POLICY = OwnerPolicy(vram_cap_gib=10.0, pause_programs=("eldenring.exe",))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now



@pytest.fixture
def worker() -> Iterator[Supervisor]:
    sup = Supervisor(WorkerCommand((sys.executable, "-c", "import time; time.sleep(600)"), {}), min_delay_s=0.1,
                     stop_timeout_s=5)
    yield sup
    sup.stop()


def test_a_game_pauses_the_node_and_stops_the_worker_and_resume_restarts_it(worker: Supervisor) -> None:
    probe, clock = FakeProbe(), Clock()
    agent = Agent(probe, POLICY, worker, release_s=5, settle_s=30, clock=clock, minute_of_day=lambda: 600)
    assert agent.tick().status == NodeStatus.IDLE
    assert wait_until(lambda: worker.running)
    probe.processes = [ProcessSample(4242, "EldenRing.exe", True)]
    clock.now = 1
    snap = agent.tick()
    assert snap.status == NodeStatus.PAUSED and "EldenRing.exe" in snap.reason
    assert worker.running  # the head gets `release_s` to checkpoint the segment at a step boundary
    clock.now = 7
    agent.tick()
    assert wait_until(lambda: not worker.running and not worker.wanted)
    probe.processes = []
    clock.now = 8
    assert agent.tick().status == NodeStatus.PAUSED  # settling
    clock.now = 40
    assert agent.tick().status == NodeStatus.IDLE
    assert wait_until(lambda: worker.running)


def test_drain_keeps_the_worker_for_the_segment_in_flight_then_stops_it(worker: Supervisor) -> None:
    clock = Clock()
    agent = Agent(FakeProbe(), POLICY, worker, drain_s=60, clock=clock, minute_of_day=lambda: 600)
    agent.tick()
    assert wait_until(lambda: worker.running)
    assert agent.drain("maintenance").status == NodeStatus.DRAINING
    clock.now = 30
    agent.tick()
    assert worker.running
    clock.now = 61
    agent.tick()
    assert wait_until(lambda: not worker.running)
    assert agent.resume().status == NodeStatus.IDLE
    assert wait_until(lambda: worker.running)


class AgentPeer:
    """An agent served as a joined PC serves it: node certificate from the farm CA, node token."""

    def __init__(self, folder: Path) -> None:
        self.ca = FarmCA.load_or_create(folder)
        key, csr = new_key_and_csr("pc1")
        tls = TlsIdentity(key, self.ca.issue(csr, node_host("pc1")))
        self.probe = FakeProbe()
        self.agent = Agent(self.probe, POLICY, None, minute_of_day=lambda: 600)
        self.agent.tick()
        self.token = "node-secret"
        self.server, self.port = serve_agent(self.agent, "127.0.0.1:0", tls=tls, node_token=self.token)

    def stub(self, roots: bytes | None = None, name: str = node_host("pc1")) -> agent_pb2_grpc.NodeAgentStub:
        return agent_pb2_grpc.NodeAgentStub(open_channel("127.0.0.1", self.port, roots or self.ca.cert_pem, name))


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[AgentPeer]:
    p = AgentPeer(tmp_path / "ca")
    yield p
    p.server.stop(None)


def test_every_node_agent_rpc(peer: AgentPeer) -> None:
    stub, md = peer.stub(), bearer(peer.token)
    hw = stub.Describe(agent_pb2.DescribeRequest(), metadata=md, timeout=5)
    assert hw.simulated and hw.gpus[0].name == "simulated 12 GiB (CPU)" and hw.gpus[0].vram_total_gib == 12.0
    stream = stub.StreamTelemetry(agent_pb2.TelemetryRequest(interval_s=0.2), metadata=md, timeout=10)
    first = next(stream)
    assert first.state == "idle" and first.gpus[0].simulated and first.policy.pause_programs == ["eldenring.exe"]
    assert stub.Pause(agent_pb2.NodeCommand(reason="owner asked"), metadata=md, timeout=5).state == "paused"
    assert next(stream).reason == "owner asked"
    assert stub.Resume(agent_pb2.NodeCommand(), metadata=md, timeout=5).state == "idle"
    assert stub.Drain(agent_pb2.NodeCommand(), metadata=md, timeout=5).state == "draining"
    stub.Resume(agent_pb2.NodeCommand(), metadata=md, timeout=5)
    peer.probe.processes = [ProcessSample(7, "steam", False)]
    new = OwnerPolicy(active_hours="22:00-08:00", pause_programs=("steam",))
    reply = stub.SetPolicy(agent_pb2.SetPolicyRequest(policy=convert.policy_to_proto(new)), metadata=md, timeout=5)
    assert reply.state == "paused" and "steam" in reply.reason
    stream.cancel()


def test_bad_policy_is_invalid_argument(peer: AgentPeer) -> None:
    bad = agent_pb2.SetPolicyRequest(policy=agent_pb2.OwnerPolicy(active_hours="soon"))
    with pytest.raises(grpc.RpcError) as e:
        peer.stub().SetPolicy(bad, metadata=bearer(peer.token), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("active_hours:")


@pytest.mark.parametrize("metadata", [(), bearer("farm1.wrong.token")])
def test_agent_refuses_calls_without_its_node_token(peer: AgentPeer, metadata: tuple) -> None:
    with pytest.raises(grpc.RpcError) as e:
        peer.stub().Pause(agent_pb2.NodeCommand(), metadata=metadata, timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert peer.agent.latest(0, 0).status == NodeStatus.IDLE


def test_agent_certificate_names_its_node(peer: AgentPeer, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as e:  # the head checks it reached the node it meant to
        peer.stub(name=node_host("pc2")).Describe(agent_pb2.DescribeRequest(), metadata=bearer(peer.token), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = FarmCA.load_or_create(tmp_path / "stranger").cert_pem
    with pytest.raises(grpc.RpcError) as e:
        peer.stub(roots=stranger).Describe(agent_pb2.DescribeRequest(), metadata=bearer(peer.token), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_farm_over_the_owners_vram_cap_pauses(worker: Supervisor) -> None:
    probe, clock = FakeProbe(), Clock()
    agent = Agent(probe, POLICY, worker, clock=clock, minute_of_day=lambda: 600)
    agent.tick()
    assert wait_until(lambda: worker.pid is not None)
    probe.processes = [ProcessSample(worker.pid, "raylet", True, 6.0)]  # type: ignore[arg-type]
    assert agent.tick().status == NodeStatus.IDLE
    probe.processes = [ProcessSample(worker.pid, "raylet", True, 10.5)]  # type: ignore[arg-type]
    snap = agent.tick()
    assert snap.status == NodeStatus.PAUSED and "over the owner's cap of 10 GiB" in snap.reason
