"""Random FarmControl messages against a real coordinator behind the real gRPC server (TLS, token):
every field of every request message drawn at random. Each call answers OK or a client error that
names a field (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION), never an internal error, and the job
queued before stays queued."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_coordinator import MemorySink, ScriptedExecutor

from farm.api.control_client import open_channel
from farm.api.control_server import serve_control
from farm.cluster.credentials import HeadCredentials
from farm.cluster.membership import Membership
from farm.contracts.domain import JobStatus
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator
from node.simulated import simulated_nodes
from protos.farm.v1 import control_pb2

SERVICE = control_pb2.DESCRIPTOR.services_by_name["FarmControl"]
# Streams are long-lived; token rotation and node removal change who may call at all; RayToken is a
# joined PC's (this test calls with the admin token: tests/test_security_access.py has every role).
SKIP = {"StreamEvents", "RotateToken", "RemoveNode", "RayToken"}
METHODS = [m for m in SERVICE.methods if not m.server_streaming and m.name not in SKIP]
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}

SCALARS = {
    FieldDescriptor.TYPE_STRING: st.one_of(st.text(max_size=20),
                                           st.sampled_from(["demo-tiny", "j1", "sim-8gb", "euler_a"])),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=20),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
}


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Any message of this type: each field absent or random, nested messages included."""
    fields = {}
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 2 or f.message_type.GetOptions().map_entry:
                continue
            one = message(f.message_type, depth + 1)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            one = st.sampled_from([v.number for v in f.enum_type.values])
        else:
            one = SCALARS[f.type]
        fields[f.name] = st.lists(one, max_size=3) if f.is_repeated else one
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: message_factory.GetMessageClass(descriptor)(**kw))


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("head")
    farm = Coordinator(ScriptedExecutor(simulated_nodes()), MemorySink(), max_segment_steps=2)
    creds = HeadCredentials.load_or_create(folder)
    members = Membership(folder, creds.ca, creds.tokens, "127.0.0.1:6379", "ray-secret", on_join=lambda m: None,
                         on_remove=lambda m: None)
    server, port = serve_control(farm, "127.0.0.1:0", tls=creds.tls, tokens=creds.tokens, membership=members)
    queued = farm.submit(make_job(prompts=["kept"], seeds=2, steps=4))
    channel = open_channel("127.0.0.1", port, creds.tls.cert_pem)
    yield farm, channel, creds.tokens.admin_token, queued
    server.stop(None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_messages_never_crash_the_head_or_lose_the_queue(head, data: st.DataObject) -> None:
    farm, channel, token, queued = head
    method = data.draw(st.sampled_from(METHODS))
    request = data.draw(message(method.input_type))
    output = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(f"/{SERVICE.full_name}/{method.name}",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=output.FromString)
    try:
        call(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS, f"{method.name}: {e.code()} {e.details()}"
        assert "\n" not in e.details() and ": " in e.details()
    kept = farm.get_job(queued)  # still there, whatever happened to it
    assert kept.samples_total == 2 and kept.status in tuple(JobStatus)
