"""Issue 15, the cluster and access side: roles, identity, revocation, tokens kept out of `ps`.

The role matrix calls every RPC of every service the farm serves with every credential, taken from
the service descriptors, so a new RPC fails here until it has a row in `farm.api.auth.ROLES` and an
expectation below. Then one test per attack of the issue, each asserting that it is refused.
"""

from __future__ import annotations

import datetime
import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cluster_harness import HARDWARE, Head
from cryptography import x509
from test_agent import AgentPeer

import protos.farm.v1
from farm.api.auth import ROLES, bearer
from farm.api.control_client import FarmClient, open_channel
from farm.cli.main import main
from farm.cluster.membership import Member
from farm.cluster.pki import TlsIdentity, new_key_and_csr, node_host, write_private
from farm.contracts.control import OwnerPolicy
from farm.contracts.errors import PermissionDenied, Unauthenticated, Unreachable
from farm.jobs.jobspec import make_job
from node.agent_server import serve_agent
from protos.farm.v1 import agent_pb2, agent_pb2_grpc, control_pb2

CONTROL = control_pb2.DESCRIPTOR.services_by_name["FarmControl"]
AGENT = agent_pb2.DESCRIPTOR.services_by_name["NodeAgent"]
# What the issue asks of each FarmControl RPC (written out here, not read from ROLES).
USER_RPCS = {"Submit", "ListJobs", "GetJob", "CancelJob", "RemoveJob", "PauseJob", "ResumeJob", "RetryJob",
             "SetPriority", "ListNodes", "StreamEvents", "GetPreview", "GetOutput"}
ADMIN_RPCS = {"MoveJob", "PauseNode", "DrainNode", "ResumeNode", "RotateToken", "RemoveNode", "IssueUserToken"}
JOIN_RPCS = {"Join"}
NODE_RPCS = {"Join", "RayToken"}  # a node token rejoins as its own PC and asks for Ray's current token
EXPECTED = {
    "admin": USER_RPCS | ADMIN_RPCS | JOIN_RPCS,
    "user": USER_RPCS,
    "join": JOIN_RPCS,
    "node": NODE_RPCS,
}
REFUSED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


@dataclass
class Farm:
    head: Head
    tokens: dict[str, str | None]  # role -> token
    ana_job: str
    bob_job: str

    def client(self, role: str) -> FarmClient:
        return self.head.client(token=self.tokens[role])


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    head = Head(tmp_path / "head")
    admin = head.client()
    tokens: dict[str, str | None] = {"admin": head.creds.tokens.admin_token, "user": admin.issue_user_token("ana"),
                                     "bob": admin.issue_user_token("bob"), "join": head.creds.tokens.join_token}
    _, csr = new_key_and_csr("pc3")
    tokens["node"] = head.client(token=tokens["join"]).join("pc3", csr, HARDWARE, ":7071", OwnerPolicy()).node_token
    ana_job = head.client(token=tokens["user"]).submit(make_job(prompts=["ana's"], steps=4))
    bob_job = head.client(token=tokens["bob"]).submit(make_job(prompts=["bob's"], steps=4))
    yield Farm(head, tokens, ana_job, bob_job)
    head.server.stop(None)


def _request(method, job: str):  # type: ignore[no-untyped-def]
    """A request for `method` naming `job` where it takes one (so a user's call is about their own job)."""
    message = importlib.import_module(method.input_type.file.name.replace("/", ".").removesuffix(".proto") + "_pb2")
    request = getattr(message, method.input_type.name)()
    if "job_id" in method.input_type.fields_by_name:
        request.job_id = job
    if method.name == "StreamEvents":
        request.wait_s = 0.0
    return request


def _code(channel: grpc.Channel, service, method, request, token: str | None) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    path = f"/{service.full_name}/{method.name}"
    output = importlib.import_module(method.output_type.file.name.replace("/", ".").removesuffix(".proto") + "_pb2")
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream}
    call = kinds[(method.client_streaming, method.server_streaming)](
        path, request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=getattr(output, method.output_type.name).FromString)
    try:
        reply = call(request, metadata=bearer(token) if token else (), timeout=5)
        if method.server_streaming:  # its first message (or its end) says whether it was admitted
            next(reply, None)
            reply.cancel()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_every_rpc_of_every_service_has_a_row_in_the_role_table() -> None:
    """A new RPC, in any service of protos/farm/v1, is refused to all until ROLES names who may call it."""
    missing = []
    for info in pkgutil.iter_modules(protos.farm.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"protos.farm.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                missing += [f"/{service.full_name}/{m.name}" for m in service.methods
                            if f"/{service.full_name}/{m.name}" not in ROLES]
    assert missing == []
    assert {m.name for m in CONTROL.methods} == set().union(*EXPECTED.values()), "a new RPC needs an expectation here"


@pytest.mark.parametrize("role", ["admin", "user", "join", "node", "none", "wrong"])
def test_every_farm_control_rpc_with_every_role(farm: Farm, role: str) -> None:
    token = {"none": None, "wrong": "farm1." + "0" * 32 + ".wrong"}.get(role, farm.tokens.get(role))
    channel = open_channel("127.0.0.1", farm.head.port, farm.head.creds.tls.cert_pem)
    seen = {}
    for method in CONTROL.methods:
        if method.name == "RemoveNode" and role == "admin":
            continue  # it would remove pc3, whose node token the other roles' runs use; called below
        seen[method.name] = _code(channel, CONTROL, method, _request(method, farm.ana_job), token)
    for name, code in seen.items():
        if role in ("none", "wrong"):
            assert code == grpc.StatusCode.UNAUTHENTICATED, (name, code)
        elif name in EXPECTED[role]:
            assert code not in REFUSED, (role, name, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, name, code)
    if role == "admin":
        farm.head.client().remove_node("pc3")


@pytest.mark.parametrize("role", ["admin", "user", "join", "node", "none"])
def test_every_node_agent_rpc_with_every_role(tmp_path: Path, role: str) -> None:
    """A PC's agent answers its own node token (the one the head presents) and nobody else."""
    peer = AgentPeer(tmp_path / "ca")
    token = {"admin": "farm1." + "a" * 32 + ".admin", "user": "farm1." + "a" * 32 + ".ana", "join": "farm1.x.y",
             "node": peer.token, "none": None}[role]
    try:
        channel = open_channel("127.0.0.1", peer.port, peer.ca.cert_pem, node_host("pc1"))
        for method in AGENT.methods:
            code = _code(channel, AGENT, method, getattr(agent_pb2, method.input_type.name)(), token)
            assert (code not in REFUSED) if role == "node" else code == grpc.StatusCode.UNAUTHENTICATED, (method.name,
                                                                                                        code)
    finally:
        peer.server.stop(None)


# ----- the attacks of the issue, each refused --------------------------------------------------------------------


def test_a_user_token_cannot_join_and_never_sees_the_ray_token(farm: Farm) -> None:
    """Critical: the token every CLI user held joined PCs, and Join returned the Ray token."""
    _, csr = new_key_and_csr("evil")
    with pytest.raises(PermissionDenied, match="Join: not allowed for the user role"):
        farm.client("user").join("evil", csr, HARDWARE, ":7071", OwnerPolicy())
    assert [m.name for m in farm.head.members.members()] == ["pc3"]


def test_the_join_token_joins_and_does_nothing_else(farm: Farm) -> None:
    for call in (lambda c: c.list_jobs(), lambda c: c.submit(make_job(prompts=["x"], steps=4)),
                 lambda c: c.rotate_token(), lambda c: c.remove_node("pc3"), lambda c: c.events(0)):
        with pytest.raises(PermissionDenied):
            call(farm.client("join"))


def test_a_users_job_is_theirs_whatever_owner_they_claim(farm: Farm) -> None:
    job = farm.client("user").submit(make_job(prompts=["x"], steps=4, owner="bob"))
    assert farm.client("user").get_job(job).spec.owner == "ana"


def test_a_user_cannot_touch_another_users_job(farm: Farm) -> None:
    ana = farm.client("user")
    for action in (ana.cancel_job, ana.pause_job, ana.resume_job, ana.retry_job, lambda j: ana.set_priority(j, -1),
                   lambda j: ana.preview(j, 0), lambda j: ana.read_output(j, 0)):
        with pytest.raises(PermissionDenied, match="belongs to another user"):
            action(farm.bob_job)
    ana.pause_job(farm.ana_job)  # their own: fine
    farm.client("admin").pause_job(farm.bob_job)  # the admin: anyone's


def test_priorities_above_zero_need_the_admin(farm: Farm) -> None:
    ana = farm.client("user")
    with pytest.raises(PermissionDenied, match="priority"):
        ana.submit(make_job(prompts=["x"], steps=4, priority=5))
    with pytest.raises(PermissionDenied, match="priority"):
        ana.set_priority(farm.ana_job, 1)
    ana.set_priority(farm.ana_job, -3)
    farm.client("admin").set_priority(farm.ana_job, 7)


def test_a_user_cannot_rotate_remove_or_issue(farm: Farm) -> None:
    """High: any token holder could rotate the token (and remove PCs)."""
    ana = farm.client("user")
    for call in (ana.rotate_token, lambda: ana.remove_node("pc3"), lambda: ana.issue_user_token("ana2"),
                 lambda: ana.pause_node("pc1"), lambda: ana.move_job(farm.ana_job, -1)):
        with pytest.raises(PermissionDenied):
            call()
    assert [m.name for m in farm.head.members.members()] == ["pc3"]


def test_a_reissued_user_token_replaces_the_old_one(farm: Farm) -> None:
    new = farm.client("admin").issue_user_token("ana")
    with pytest.raises(Unauthenticated):
        farm.client("user").list_jobs()
    assert farm.head.client(token=new).get_job(farm.ana_job).spec.owner == "ana"


def test_join_with_a_members_name_is_refused(farm: Farm) -> None:
    """High: Join with an existing member's name re-pointed that member and issued a certificate for it."""
    before = farm.head.members.members()
    _, csr = new_key_and_csr("pc3")
    for role in ("join", "admin"):
        with pytest.raises(PermissionDenied, match="already a member"):
            farm.client(role).join("pc3", csr, HARDWARE, "10.9.9.9:7071", OwnerPolicy())
    assert farm.head.members.members() == before  # same address, same certificate


def test_certificates_last_a_year_and_a_rejoin_renews_them(farm: Farm) -> None:
    """High: certificates were valid 10 years."""
    (member,) = farm.head.members.members()
    cert = x509.load_pem_x509_certificate(member.cert_pem.encode())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=366)
    _, csr = new_key_and_csr("pc3")
    again = farm.client("node").join("pc3", csr, HARDWARE, ":7071", OwnerPolicy())
    renewed = x509.load_pem_x509_certificate(again.cert_pem)
    assert renewed.serial_number != cert.serial_number and renewed.not_valid_after_utc >= cert.not_valid_after_utc
    assert farm.head.members.members()[0].agent_host != member.agent_host  # the head now checks the new one


def test_a_removed_pcs_node_token_opens_nothing(farm: Farm) -> None:
    """High: a removed PC kept working credentials (its Ray token: tests/test_lan_security.py)."""
    _, csr = new_key_and_csr("pc4")
    grant = farm.client("join").join("pc4", csr, HARDWARE, ":7071", OwnerPolicy())
    ray = farm.head.client(token=grant.node_token).ray_credentials()
    assert (ray.address, ray.token) == ("10.0.0.1:6379", "ray-secret")
    farm.client("admin").remove_node("pc4")
    assert farm.head.removed == ["pc4"]
    with pytest.raises(Unauthenticated):
        farm.head.client(token=grant.node_token).join("pc4", csr, HARDWARE, ":7071", OwnerPolicy())
    with pytest.raises(Unauthenticated):
        farm.head.client(token=grant.node_token).ray_credentials()


def test_only_a_member_pc_learns_rays_token(farm: Farm) -> None:
    for role in ("user", "join", "admin"):
        with pytest.raises(PermissionDenied):
            farm.client(role).ray_credentials()


def test_the_head_reaches_an_agent_only_through_its_current_certificate(farm: Farm, tmp_path: Path) -> None:
    """A PC's older certificate (before a rejoin) cannot stand in for its agent."""
    key, csr = new_key_and_csr("pc5")
    old = farm.client("join").join("pc5", csr, HARDWARE, ":7071", OwnerPolicy())
    member = next(m for m in farm.head.members.members() if m.name == "pc5")
    peer = AgentPeer(tmp_path / "x")
    server, port = serve_agent(peer.agent, "127.0.0.1:0", tls=TlsIdentity(key, old.cert_pem), node_token=old.node_token)
    try:
        def describe(m: Member) -> object:
            stub = agent_pb2_grpc.NodeAgentStub(open_channel("127.0.0.1", port, farm.head.creds.ca.cert_pem,
                                                             m.agent_host))
            return stub.Describe(agent_pb2.DescribeRequest(), metadata=bearer(m.token), timeout=5)

        assert describe(member).gpus  # its current certificate
        _, csr2 = new_key_and_csr("pc5")
        farm.head.client(token=old.node_token).join("pc5", csr2, HARDWARE, ":7071", OwnerPolicy())
        renewed = next(m for m in farm.head.members.members() if m.name == "pc5")
        with pytest.raises(grpc.RpcError) as e:  # the agent still serves the old one: the head refuses it
            describe(renewed)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
        peer.server.stop(None)


def test_the_join_line_keeps_the_token_out_of_the_command_line(tmp_path: Path) -> None:
    """Low: the printed join line put the token on the command line (visible in `ps`)."""
    from farm.cli.head import Head as FarmHead
    from farm.cli.head import HeadConfig
    from node.probe import SimulatedGpus

    head = FarmHead(HeadConfig(home=tmp_path, name="h", advertise="10.0.0.1"), SimulatedGpus([8.0]))
    head.port = 7070
    line = head.join_command()
    assert line == f"FARM_TOKEN={head.creds.tokens.join_token} farm join 10.0.0.1:7070"
    assert head.creds.tokens.admin_token not in line


def test_farm_join_reads_the_token_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FARM_TOKEN", raising=False)
    assert main(["join", "127.0.0.1:1", "--simulate-gpu", "8"]) == 2
    assert "FARM_TOKEN" in capsys.readouterr().err
    write_private(tmp_path / "t", b"farm1.not.a-token\n")
    assert main(["join", "127.0.0.1:1", "--token-file", str(tmp_path / "t"), "--simulate-gpu", "8"]) == 2
    assert "--token: is not a farm token" in capsys.readouterr().err  # read from the file, then checked
    monkeypatch.setenv("FARM_TOKEN", "farm1." + "0" * 32 + ".secret")
    assert main(["join", "127.0.0.1:1", "--simulate-gpu", "8"]) == 1  # read from FARM_TOKEN: on to the head
    assert "cannot reach the head" in capsys.readouterr().err


def test_the_cli_shows_a_refusal_as_one_line_and_exit_2(farm: Farm, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FARM_HEAD", raising=False)
    args = ["--head", f"127.0.0.1:{farm.head.port}", "--token", str(farm.tokens["user"])]
    monkeypatch.setenv("FARM_HOME", str(farm.head.creds.folder.parent))  # trusts the head's certificate
    assert main(["node", "pause", "pc1", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("farm: ") and "PauseNode: not allowed for the user role" in err and err.count("\n") == 1
    assert main(["token", "issue", "--user", "carol", *args]) == 2
    capsys.readouterr()
    admin = ["--head", f"127.0.0.1:{farm.head.port}", "--token", str(farm.tokens["admin"])]
    assert main(["token", "issue", "--user", "carol", *admin]) == 0
    carol = capsys.readouterr().out.strip()
    assert main(["jobs", "--json", "--head", f"127.0.0.1:{farm.head.port}", "--token", carol]) == 0
    assert main(["token", "issue", "--user", "admin", *admin]) == 2  # reserved: the admin's own jobs
    assert "--user" in capsys.readouterr().err


def test_unreachable_with_a_stranger_ca(farm: Farm, tmp_path: Path) -> None:
    """Nothing answers without the farm's certificate chain (the LAN attacker's first step)."""
    from farm.cluster.pki import FarmCA

    other = FarmCA.load_or_create(tmp_path / "other").cert_pem
    with pytest.raises(Unreachable):
        FarmClient(open_channel("127.0.0.1", farm.head.port, other), farm.tokens["admin"], timeout=3).list_jobs()
