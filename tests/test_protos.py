"""The committed gRPC code matches the .proto files, and the installed grpcio can load it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# protos/generate.py is a script, loaded by path: putting protos/ on sys.path would let protos/farm
# shadow the farm package.
_spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
generate = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(generate)  # type: ignore[union-attr]


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    assert fresh, "the generator produced nothing"
    for path in fresh:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is not committed: run python protos/generate.py"
        assert committed.read_bytes() == path.read_bytes(), f"{rel} is stale: run python protos/generate.py"
    on_disk = {p.relative_to(ROOT) for p in (ROOT / "protos").rglob("*") if p.name.endswith(generate.SUFFIXES)}
    assert on_disk == {p.relative_to(tmp_path) for p in fresh}, "generated files without a .proto: delete them"


def test_generated_modules_import_with_the_installed_grpcio() -> None:
    from protos.farm.v1 import agent_pb2_grpc, control_pb2_grpc

    assert hasattr(control_pb2_grpc, "FarmControlServicer") and hasattr(agent_pb2_grpc, "NodeAgentServicer")
