"""The `NodeAgent` gRPC server: the head's view into one PC, and its levers on it.

It listens with the certificate the farm CA issued at join (`node-<name>`) and accepts only the node
token that the head holds for this PC, so nobody else on the network can pause a stranger's node or
read what runs on it. On loopback (the head's own agent, tests) it may run without TLS or token.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from farm.api import convert
from farm.api.auth import Access, TokenInterceptor, only
from farm.api.control_server import serve
from farm.api.status import answer
from farm.cluster.pki import TlsIdentity
from farm.cluster.tokens import Principal, Role
from node.agent import Agent, Snapshot
from protos.farm.v1 import agent_pb2, agent_pb2_grpc

SERVICE_NAME = "protos.farm.v1.NodeAgent"
MIN_INTERVAL_S = 0.2


def _state(snap: Snapshot) -> agent_pb2.AgentState:
    return agent_pb2.AgentState(state=str(snap.status), reason=snap.reason)


def telemetry_message(snap: Snapshot) -> agent_pb2.Telemetry:
    return convert.telemetry_to_proto(snap.telemetry, str(snap.status), snap.reason, snap.worker_running, snap.policy,
                                      snap.by_operator, snap.worker_starts)


class NodeAgentServicer(agent_pb2_grpc.NodeAgentServicer):
    def __init__(self, agent: Agent, default_interval_s: float = 2.0) -> None:
        self.agent = agent
        self.default_interval_s = default_interval_s

    def Describe(self, request, context):  # type: ignore[no-untyped-def]
        return convert.hardware_to_proto(self.agent.hardware())

    def StreamTelemetry(self, request, context) -> Iterator[agent_pb2.Telemetry]:  # type: ignore[no-untyped-def]
        """The latest snapshot at once, then each new one (at most one per `interval_s`)."""
        interval = max(request.interval_s or self.default_interval_s, MIN_INTERVAL_S)
        seq = 0
        while context.is_active():
            snap = self.agent.latest(seq, timeout=interval)
            if snap is None:
                continue
            seq = snap.seq
            yield telemetry_message(snap)

    def Pause(self, request, context):  # type: ignore[no-untyped-def]
        return _state(self.agent.pause(request.reason))

    def Resume(self, request, context):  # type: ignore[no-untyped-def]
        return _state(self.agent.resume())

    def Drain(self, request, context):  # type: ignore[no-untyped-def]
        return _state(self.agent.drain(request.reason))

    def SetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        return answer(context, lambda: _state(self.agent.set_policy(convert.policy_from_proto(request.policy))))


def serve_agent(agent: Agent, address: str, *, tls: TlsIdentity | None = None,
                node_token: str | None = None) -> tuple[grpc.Server, int]:
    """Serve `agent` as NodeAgent; with `node_token`, every call but health needs it."""
    interceptor = None
    if node_token is not None:
        interceptor = TokenInterceptor(Access(only(node_token, Principal(Role.NODE, "head"))))
    servicer = NodeAgentServicer(agent)
    return serve(lambda s: agent_pb2_grpc.add_NodeAgentServicer_to_server(servicer, s), address, tls=tls,
                 interceptor=interceptor, names=(SERVICE_NAME,))
