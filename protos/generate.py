"""Regenerate the gRPC code from `protos/**/*.proto`: `python protos/generate.py`.

The repository root is the include root, so `protos/farm/v1/agent.proto` becomes the module
`protos.farm.v1.agent_pb2` and imports between generated files resolve as package imports. The
generated files are committed; `tests/test_protos.py` regenerates into a temporary folder and fails
when they are stale. grpcio must be at least the grpcio-tools version that generated them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted((ROOT / "protos").rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Write the generated modules under `out` (mirroring the proto paths) and return them."""
    from importlib.resources import files

    from grpc_tools import protoc

    protos = proto_files()
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{files('grpc_tools') / '_proto'}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            *(str(p.relative_to(ROOT)) for p in protos)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out / "protos").rglob("*") if p.name.endswith(SUFFIXES))


if __name__ == "__main__":
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    sys.exit(0)
