"""FarmControl end to end, in-process on 127.0.0.1 port 0: every RPC through the real client and
server over TLS with the farm's own certificates, the token checks, TLS rejection, bad messages."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cluster_harness import HARDWARE, Head
from cryptography import x509
from fake_farm import FakeFarm
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from farm.api.control_client import FarmClient, open_channel
from farm.api.control_server import serve_control
from farm.cluster.credentials import HeadCredentials
from farm.cluster.membership import Membership
from farm.cluster.pki import FarmCA, PinMismatch, fetch_pinned_cert, new_key_and_csr, node_host, pin, serial_host
from farm.contracts.control import NodeShare, NodeStatus, OwnerPolicy, ShardView
from farm.contracts.domain import JobStatus
from farm.contracts.errors import FarmError, InvalidInput, NotFound, PermissionDenied, Unauthenticated, Unreachable
from farm.jobs.jobspec import load_job_request, make_job
from protos.farm.v1 import control_pb2, control_pb2_grpc


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    h = Head(tmp_path / "head")
    yield h
    h.server.stop(None)


def job(**kw: object):  # type: ignore[no-untyped-def]
    return make_job(prompts=["a red circle", "a blue square"], seeds=2, steps=4, **kw)


def test_every_farm_rpc_round_trips(head: Head) -> None:
    c = head.client()
    spec = job(priority=5, owner="ana")
    job_id = c.submit(spec)
    assert c.get_job(job_id).spec == replace(spec, owner="admin")  # the token's user owns it, not the field
    assert [j.id for j in c.list_jobs()] == [job_id]
    assert c.get_job(job_id).samples_total == 4 and c.get_job(job_id).status == JobStatus.QUEUED
    c.set_priority(job_id, 9)
    c.move_job(job_id, -2)
    c.pause_job(job_id)
    c.resume_job(job_id)
    head.farm.put_job(replace(head.farm.jobs[job_id], status=JobStatus.FAILED))  # only a failed job is retried
    c.retry_job(job_id)
    assert head.farm.get_job(job_id).spec.priority == 9
    assert ("move_job", job_id, -2) in head.farm.calls
    assert [call for call in head.farm.calls if call[0] in ("pause_job", "resume_job", "retry_job")] == [
        ("pause_job", job_id), ("resume_job", job_id), ("retry_job", job_id)]
    assert c.preview(job_id, 0) is None
    head.farm.previews[(job_id, 1)] = b"\x89PNG fake"
    assert c.preview(job_id, 1) == b"\x89PNG fake"
    c.cancel_job(job_id)
    assert c.get_job(job_id).status == JobStatus.CANCELLED
    detailed = replace(head.farm.jobs[job_id], started_at=5.0, eta_s=12.5, error="x", outputs=("a.png",),
                       shards=(ShardView(f"{job_id}/s0", "pc1", (0, 2), ((0, 2), (2, 4)), 2, "pc2", "offload"),),
                       shares=(NodeShare("pc1", samples=1, shards=1, segments=2, steps=8, seconds=1.5),))
    head.farm.jobs[job_id] = detailed
    assert c.get_job(job_id) == detailed and c.list_jobs() == [detailed]  # every field survives the wire

    nodes = {n.info.name: n for n in c.list_nodes()}
    assert nodes == head.farm.nodes  # NodeView, NodeInfo, OwnerPolicy, optional fields all survive the wire
    c.pause_node("pc1")
    c.drain_node("pc2")
    assert {n.info.name: n.status for n in c.list_nodes()} == {"pc1": NodeStatus.PAUSED, "pc2": NodeStatus.DRAINING}
    c.resume_node("pc1")

    kinds = [e.kind for e in c.events(0)]
    assert kinds[0] == "job_submitted" and kinds[-2:] == ["node_draining", "node_resumed"]
    last = c.events(0)[-1].seq
    assert c.events(last, timeout=0.2) == []
    follow = c.follow_events(last)
    head.farm.pause_node("pc2")
    assert next(follow).kind == "node_paused"
    follow.close()


def test_join_issues_a_node_certificate_and_the_ray_address(head: Head) -> None:
    key, csr = new_key_and_csr("pc3")
    grant = head.client().join("pc3", csr, HARDWARE, ":7071", OwnerPolicy(vram_cap_gib=16.0))
    cert = x509.load_pem_x509_certificate(grant.cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(grant.ca_pem))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [node_host("pc3"), serial_host(cert.serial_number,
                                                                                     node_host("pc3")), "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]  # for Ray's TLS
    assert (grant.ray_address, grant.ray_token) == ("10.0.0.1:6379", "ray-secret")
    assert [(n.name, n.vram_gib, n.gpu) for n in grant.nodes] == [("pc3-gpu0", 16.0, "RTX 4090"),
                                                                   ("pc3-gpu1", 12.0, "RTX 3060")]
    assert head.members.members()[0].agent_address == "127.0.0.1:7071"  # the host the call came from
    # The node token lets that node join again (after a restart), and nothing else.
    again = head.client(token=grant.node_token).join("pc3", csr, HARDWARE, ":7071", OwnerPolicy())
    assert again.node_token != grant.node_token
    with pytest.raises(PermissionDenied):
        head.client(token=again.node_token).join("pc4", csr, HARDWARE, ":7071", OwnerPolicy())
    with pytest.raises(PermissionDenied):
        head.client(token=again.node_token).list_jobs()
    assert head.joined == ["pc3", "pc3"]
    # A restarted head knows its PCs again, with the token to reach each agent; only its owner can read it.
    folder = head.creds.folder
    reloaded = Membership(folder, head.creds.ca, head.creds.tokens, "10.0.0.1:6379", "ray-secret").members()
    assert reloaded == head.members.members() and reloaded[0].token == again.node_token
    assert (folder / "members.json").stat().st_mode & 0o077 == 0


def test_removed_node_cannot_join_again_with_its_token(head: Head) -> None:
    _, csr = new_key_and_csr("pc3")
    grant = head.client().join("pc3", csr, HARDWARE, ":7071", OwnerPolicy())
    head.client().remove_node("pc3")
    assert head.removed == ["pc3"] and head.members.members() == []
    with pytest.raises(Unauthenticated):
        head.client(token=grant.node_token).join("pc3", csr, HARDWARE, ":7071", OwnerPolicy())
    with pytest.raises(NotFound, match="pc3"):
        head.client().remove_node("pc3")


def test_rotated_join_token_replaces_the_old_one_and_nothing_else(head: Head) -> None:
    old = head.creds.tokens.join_token
    new = head.client().rotate_token()
    assert new != old and pin(head.creds.tls.cert_pem) in new
    _, csr = new_key_and_csr("pc3")
    with pytest.raises(Unauthenticated):
        head.client(token=old).join("pc3", csr, HARDWARE, ":7071", OwnerPolicy())
    assert head.client(token=new).join("pc3", csr, HARDWARE, ":7071", OwnerPolicy()).nodes
    with pytest.raises(PermissionDenied):  # a join token joins, and does nothing else
        head.client(token=new).list_jobs()
    assert head.client().list_jobs() == []  # the admin token is unchanged
    # A restarted head reads the rotated token back.
    assert HeadCredentials.load_or_create(head.creds.folder).tokens.join_token == new


@pytest.mark.parametrize("token", [None, "farm1.0.wrong", "Bearer"])
def test_missing_or_wrong_token_is_unauthenticated_and_reaches_nothing(head: Head, token: str | None) -> None:
    c = head.client(token=token)
    with pytest.raises(Unauthenticated):
        c.submit(job())
    with pytest.raises(Unauthenticated):
        c.rotate_token()
    with pytest.raises(Unauthenticated):
        c.events(0)
    assert head.farm.jobs == {} and head.creds.tokens.admin_token.startswith("farm1.")


def test_tls_is_required_and_only_the_farm_ca_is_trusted(head: Head, tmp_path: Path) -> None:
    with pytest.raises(Unreachable):
        FarmClient(grpc.insecure_channel(f"127.0.0.1:{head.port}"), head.creds.tokens.admin_token,
                   timeout=3).list_jobs()
    other = FarmCA.load_or_create(tmp_path / "other").head_identity(tmp_path / "other").cert_pem
    with pytest.raises(Unreachable):
        head.client(roots=other).list_jobs()
    assert head.client(roots=head.creds.ca.cert_pem).list_jobs() == []  # the CA, as joined nodes hold it


def test_first_contact_checks_the_pin_before_sending_the_token(head: Head) -> None:
    cert = fetch_pinned_cert("127.0.0.1", head.port, pin(head.creds.tls.cert_pem))
    assert cert.strip() == head.creds.tls.cert_pem.strip()
    with pytest.raises(PinMismatch):
        fetch_pinned_cert("127.0.0.1", head.port, "0" * 32)


def test_health_is_served_without_a_token(head: Head) -> None:
    channel = open_channel("127.0.0.1", head.port, head.creds.tls.cert_pem)
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "protos.farm.v1.FarmControl"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "method, request_, field",
    [
        ("Submit", control_pb2.SubmitRequest(), "model"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny")), "prompts"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=["x"], steps=0)),
         "steps"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=["x"], width=12)),
         "width"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=[" "])), "prompts[0]"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="nope", prompts=["x"])), "model"),
        ("Submit",
         control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=["x"], guidance=float("nan"))),
         "guidance"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=["x"], priority=101)),
         "priority"),
        ("GetJob", control_pb2.JobRef(), "job_id"),
        ("CancelJob", control_pb2.JobRef(job_id="x" * 200), "job_id"),
        ("SetPriority", control_pb2.SetPriorityRequest(job_id="j1", priority=-500), "priority"),
        ("MoveJob", control_pb2.MoveJobRequest(job_id="j1", offset=0), "offset"),
        ("PauseNode", control_pb2.NodeRef(name="../etc"), "name"),
        ("Join", control_pb2.JoinRequest(name="pc9", agent_address=":7071"), "hardware.gpus"),
        ("Join", control_pb2.JoinRequest(name="pc9", agent_address="nowhere"), "agent_address"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=["a"], strength=0.5)),
         "strength"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=["a"]),
                                             init_image=b"\x89PNG not really"), "init_image"),
        ("Submit", control_pb2.SubmitRequest(spec=control_pb2.JobSpec(model="demo-tiny", prompts=["a"],
                                                                      init_image="ab" * 32)), "spec.init_image"),
    ],
)
def test_bad_messages_are_invalid_argument_naming_the_field_and_lose_nothing(
        head: Head, method: str, request_: object, field: str) -> None:
    queued = head.client().submit(job())
    stub = control_pb2_grpc.FarmControlStub(open_channel("127.0.0.1", head.port, head.creds.tls.cert_pem))
    with pytest.raises(grpc.RpcError) as e:
        auth = (("authorization", f"Bearer {head.creds.tokens.admin_token}"),)
        getattr(stub, method)(request_, metadata=auth, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith(f"{field}: ") and "\n" not in e.value.details()
    assert [j.id for j in head.farm.list_jobs()] == [queued] and head.farm.get_job(queued).status == JobStatus.QUEUED


def test_client_raises_farm_errors_with_the_field(head: Head) -> None:
    c = head.client()
    with pytest.raises(NotFound, match="no job 'j404'") as missing:
        c.get_job("j404")
    assert missing.value.field == "job"  # the coordinator's field, which the fake shares
    with pytest.raises(InvalidInput) as e:
        c.set_priority("j404", 500)
    assert e.value.field == "priority"
    job_id = c.submit(job())
    head.farm.jobs[job_id] = replace(head.farm.jobs[job_id], status=JobStatus.DONE)
    with pytest.raises(InvalidInput, match="is done"):
        c.cancel_job(job_id)


def test_unreachable_head_is_one_farm_error() -> None:
    with pytest.raises(Unreachable, match="cannot reach"):
        FarmClient(grpc.insecure_channel("127.0.0.1:1"), "t", timeout=2).list_jobs()


def test_plaintext_is_refused_off_loopback() -> None:
    with pytest.raises(FarmError, match="without TLS"):
        serve_control(FakeFarm(), "0.0.0.0:0")
    with pytest.raises(FarmError, match="without TLS"):
        open_channel("10.1.2.3", 7070, None)


def test_embedded_loopback_mode_needs_no_token() -> None:
    server, port = serve_control(FakeFarm(), "127.0.0.1:0")
    try:
        c = FarmClient(open_channel("127.0.0.1", port, None), None, timeout=5)
        assert [n.info.name for n in c.list_nodes()] == ["pc1", "pc2"]
        with pytest.raises(FarmError, match="embedded"):
            c.rotate_token()
    finally:
        server.stop(None)


def test_submit_sends_a_job_files_init_image_once_and_the_head_keeps_its_hash(head: Head, tmp_path: Path) -> None:
    """`farm submit` of an img2img job file: the image (a path relative to the file) travels with the
    Submit, the head validates the job with it and stores the bytes under their hash."""
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (35, 70, 225)).save(image, format="PNG")
    (tmp_path / "in.png").write_bytes(image.getvalue())
    job_file = tmp_path / "job.toml"
    job_file.write_text('model = "demo-tiny"\nprompts = ["a red square"]\nsteps = 10\n'
                        'init_image = "in.png"\nstrength = 0.6\n')
    job_id = head.client().submit(load_job_request(job_file))
    spec = head.client().get_job(job_id).spec
    digest = hashlib.sha256(image.getvalue()).hexdigest()
    assert (spec.init_image, spec.strength) == (digest, 0.6)
    assert head.farm.init_images == {digest: image.getvalue()}
    with pytest.raises(InvalidInput) as e:
        job_file.write_text('model = "demo-tiny"\nprompts = ["a"]\nstrength = 0.6\n')
        load_job_request(job_file)
    assert e.value.field == "strength"
