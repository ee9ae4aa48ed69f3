"""`farm join` in process against a head served in process: the PC gets its certificate, serves its
agent with it, and comes back after a token rotation as the member it already is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_harness import Head

from farm.api.auth import bearer
from farm.api.control_client import open_channel
from farm.cluster.pki import PinMismatch, node_host
from farm.contracts.errors import Unauthenticated
from node.join import JoinConfig, JoinedNode
from node.probe import SimulatedGpus
from protos.farm.v1 import agent_pb2, agent_pb2_grpc


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    h = Head(tmp_path / "head")
    yield h
    h.server.stop(None)


def joined(head: Head, home: Path, token: str) -> JoinedNode:
    cfg = JoinConfig(head=f"127.0.0.1:{head.port}", token=token, name="pc5", home=home, listen="127.0.0.1:0",
                     start_worker=False)
    node = JoinedNode(cfg, SimulatedGpus([12.0]))
    node.start()
    return node


def test_join_serves_the_agent_with_the_issued_certificate(head: Head, tmp_path: Path) -> None:
    node = joined(head, tmp_path / "pc5", head.creds.tokens.join_token)
    try:
        assert node.node_names == ["pc5"] and head.joined == ["pc5"]
        (member,) = head.members.members()
        host, port = member.agent_address.rsplit(":", 1)
        stub = agent_pb2_grpc.NodeAgentStub(open_channel(host, int(port), head.creds.ca.cert_pem, node_host("pc5")))
        hw = stub.Describe(agent_pb2.DescribeRequest(), metadata=bearer(member.token), timeout=5)
        assert hw.gpus[0].name == "simulated 12 GiB (CPU)"
        assert (tmp_path / "pc5" / "node" / "node.key").stat().st_mode & 0o077 == 0
    finally:
        node.stop()


def test_a_joined_pc_comes_back_after_a_token_rotation(head: Head, tmp_path: Path) -> None:
    old = head.creds.tokens.join_token
    joined(head, tmp_path / "pc5", old).stop()
    head.creds.tokens.rotate()
    again = joined(head, tmp_path / "pc5", old)  # the systemd unit still has the old token
    again.stop()
    assert head.joined == ["pc5", "pc5"]
    with pytest.raises(Unauthenticated):  # a PC that never joined cannot use the old token
        joined(head, tmp_path / "stranger", old)


def test_join_refuses_a_head_that_the_token_does_not_pin(head: Head, tmp_path: Path) -> None:
    forged = "farm1." + "0" * 32 + ".secret"
    with pytest.raises(PinMismatch):
        joined(head, tmp_path / "pc5", forged)
    assert head.joined == []
