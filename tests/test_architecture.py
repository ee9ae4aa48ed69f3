"""The architecture is checked, not described: the layer contracts of pyproject.toml hold (imports
point down, the pure core imports no heavy library, no threads, no clocks) and the code passes ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_contracts_hold() -> None:
    r = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_ruff_finds_nothing() -> None:
    r = subprocess.run([str(BIN / "ruff"), "check", "farm", "node", "tui", "tests", "bench", "protos/generate.py"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:]


def test_the_core_reads_no_clock_and_starts_no_thread() -> None:
    # import-linter sees imports; this also catches a clock or thread reached through another name.
    for path in (ROOT / "farm" / "core").glob("*.py"):
        text = path.read_text()
        for needle in ("time.time(", "time.monotonic(", "datetime.now(", "threading.", "random."):
            assert needle not in text, f"{path.name} uses {needle}"
