"""Node loss: a node's raylet is killed in the middle of a segment. Its segments resume from their
last checkpoints on other nodes: every output is delivered exactly once, equals an undisturbed run,
and the work redone is at most one segment per interrupted shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
VICTIM = "sim-24gb"


def test_killed_raylet_mid_segment_loses_at_most_that_segment(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FARM_HOME": str(tmp_path / "home")}
    script = Path(__file__).with_name("raylet_chaos.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path), VICTIM], env=env, capture_output=True,
                          text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    calm, chaos = report["calm"], report["chaos"]
    assert calm["status"] == chaos["status"] == "done"
    assert chaos["killed"], "the raylet was never killed mid-segment"
    assert chaos["nodes"][VICTIM] == "offline"

    # Every output exactly once, and the same pixels as the undisturbed run.
    assert len(chaos["outputs"]) == len(set(chaos["outputs"])) == 6
    names = lambda run: {Path(p).name: Path(p) for p in run["outputs"]}  # noqa: E731
    for name, path in names(chaos).items():
        a = np.asarray(Image.open(path).convert("RGB"))
        b = np.asarray(Image.open(names(calm)[name]).convert("RGB"))
        assert np.array_equal(a, b), f"{name} differs from the undisturbed run"

    # Redone work: only the segment that was running on the victim starts twice.
    starts = Counter(msg.split(" steps")[0] for kind, _, msg in chaos["events"] if kind == "segment_started")
    repeated = [seg for seg, n in starts.items() if n > 1]
    assert all(n <= 2 for n in starts.values())
    assert repeated == [chaos["killed"].split(" steps")[0]]
    lost = [e for e in chaos["events"] if e[0] == "node_lost"]
    assert len(lost) == 1 and lost[0][1] == VICTIM
