"""The head follows a PC's agent over TLS: the owner's game pauses the node in the service, telemetry
fills the node view, and an operator's pause reaches the agent."""

from __future__ import annotations

from pathlib import Path

from cluster_harness import FakeProbe
from fake_farm import FakeFarm
from waiting import wait_until

from farm.api.agent_links import AgentLinks, NodesWithTelemetry, RemoteAgent
from farm.cluster.membership import Member
from farm.cluster.pki import FarmCA, TlsIdentity, new_key_and_csr, node_host
from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.domain import NodeInfo
from farm.contracts.hardware import ProcessSample
from node.agent import Agent, InProcessHandle
from node.agent_server import serve_agent


def status(farm: FakeFarm, name: str) -> NodeStatus:
    return farm.nodes[name].status


def test_owner_rules_reach_the_coordinator_and_operator_commands_reach_the_agent(tmp_path: Path) -> None:
    ca = FarmCA.load_or_create(tmp_path)
    key, csr = new_key_and_csr("pc1")
    probe = FakeProbe()
    agent = Agent(probe, OwnerPolicy(pause_programs=("eldenring.exe",)), None, settle_s=0, minute_of_day=lambda: 600)
    agent.tick()
    server, port = serve_agent(agent, "127.0.0.1:0", tls=TlsIdentity(key, ca.issue(csr, node_host("pc1"))),
                               node_token="tok")
    farm = FakeFarm()
    links = AgentLinks(farm)
    head = NodesWithTelemetry(farm, links)
    try:
        links.add("pc1", ("pc1",), RemoteAgent(Member("pc1", f"127.0.0.1:{port}", (NodeInfo("pc1", 12.0),), "tok"),
                                               ca.cert_pem))
        assert wait_until(lambda: links.reading("pc1") is not None)
        view = next(v for v in head.list_nodes() if v.info.name == "pc1")
        assert view.policy.pause_programs == ("eldenring.exe",) and view.status == NodeStatus.IDLE

        probe.processes = [ProcessSample(99, "eldenring.exe", True)]
        agent.tick()
        assert wait_until(lambda: status(farm, "pc1") == NodeStatus.PAUSED)
        assert "eldenring.exe running" in next(v for v in head.list_nodes() if v.info.name == "pc1").pause_reason
        probe.processes = []
        agent.tick()
        agent.tick()
        assert wait_until(lambda: status(farm, "pc1") == NodeStatus.IDLE)

        head.drain_node("pc1")  # the operator, through the head's service
        assert status(farm, "pc1") == NodeStatus.DRAINING and agent.latest(0, 0).status == NodeStatus.DRAINING
        head.resume_node("pc1")
        assert agent.latest(0, 0).status == NodeStatus.IDLE
        kinds = [e.kind for e in farm.log]
        assert kinds.count("node_draining") == 1  # the agent's echo of the operator's drain is not applied twice

        server.stop(None)  # the PC goes away: it gets no new work until its agent answers again
        assert wait_until(lambda: status(farm, "pc1") == NodeStatus.PAUSED)
    finally:
        links.remove("pc1")
        server.stop(None)


def test_the_heads_own_agent_links_in_process() -> None:
    probe = FakeProbe()
    agent = Agent(probe, OwnerPolicy(pause_programs=("steam",)), None, minute_of_day=lambda: 600)
    farm = FakeFarm()
    links = AgentLinks(farm)
    links.add("pc2", ("pc2",), InProcessHandle(agent))
    try:
        agent.tick()
        assert wait_until(lambda: links.reading("pc2") is not None)
        probe.processes = [ProcessSample(5, "steam", False)]
        agent.tick()
        assert wait_until(lambda: status(farm, "pc2") == NodeStatus.PAUSED)
        links.command("pc2", None, "")  # the head forwards an operator's resume
        assert agent.latest(0, 0).status == NodeStatus.IDLE
    finally:
        links.remove("pc2")


def test_a_restarted_ray_worker_gets_new_actors(tmp_path: Path) -> None:
    import sys

    from node.worker import Supervisor, WorkerCommand

    worker = Supervisor(WorkerCommand((sys.executable, "-c", "import time; time.sleep(600)"), {}), stop_timeout_s=5)
    probe = FakeProbe()
    agent = Agent(probe, OwnerPolicy(pause_programs=("steam",)), worker, release_s=0, settle_s=0,
                  minute_of_day=lambda: 600)
    revived: list[str] = []
    links = AgentLinks(FakeFarm(), on_new_worker=revived.append)
    links.add("pc2", ("pc2",), InProcessHandle(agent))
    try:
        agent.tick()
        assert wait_until(lambda: worker.running and links.reading("pc2") is not None)
        probe.processes = [ProcessSample(5, "steam", False)]
        agent.tick()
        agent.tick()  # release_s=0: the second reading stops the worker
        assert wait_until(lambda: not worker.running)
        assert revived == []
        probe.processes = []
        # The new worker is a new Ray node: its actor must be made again (the agent ticks until it shows).
        assert wait_until(lambda: agent.tick() is not None and revived == ["pc2"])
    finally:
        links.remove("pc2")
        worker.stop()


def test_a_restart_between_two_readings_the_head_saw_still_gets_new_actors() -> None:
    """An agent sends its latest reading, not each one: the head may see its worker never started (0)
    and then restarted (2), the first start in between unseen. That is a restart: the actor that ran
    on the first worker is gone with it."""
    import threading

    from farm.contracts.hardware import Reading

    class Scripted:
        def __init__(self) -> None:
            self.closed = threading.Event()

        def follow(self):  # type: ignore[no-untyped-def]
            for starts in (0, 2):
                yield Reading(NodeStatus.IDLE, "", (), OwnerPolicy(), False, starts)
            self.closed.wait()

        def command(self, status: NodeStatus | None, reason: str) -> None:
            """Not used."""

        def close(self) -> None:
            self.closed.set()

    revived: list[str] = []
    links = AgentLinks(FakeFarm(), on_new_worker=revived.append)
    links.add("pc2", ("pc2",), Scripted())
    try:
        assert wait_until(lambda: revived == ["pc2"], timeout=10)
    finally:
        links.remove("pc2")
