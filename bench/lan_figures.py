"""The LAN figures of issue 13's closing note, measured on a head and PCs in network namespaces.

Runs the multi-PC scenarios (tests/test_lan.py: join, a killed PC, the head restarted, a blocked Ray
port) and prints the figures they measure (the lines they print starting with `figure:`), then the
idle cost of a head and one joined PC (bench/idle.py). Needs root, as both do.

    .venv/bin/python bench/lan_figures.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/test_lan.py", "-q", "-s", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True)
    figures = [line.split("figure:", 1)[1].strip() for line in run.stdout.splitlines() if "figure:" in line]
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr.strip()[-300:]
    print(f"tests/test_lan.py: {summary} (wall {time.monotonic() - began:.0f} s)")
    for figure in figures:
        print(f"  {figure}")
    idle = subprocess.run([sys.executable, "bench/idle.py"], cwd=ROOT, capture_output=True, text=True)
    print(idle.stdout.rstrip() or idle.stderr.strip()[-500:])
    return run.returncode or idle.returncode


if __name__ == "__main__":
    sys.exit(main())
