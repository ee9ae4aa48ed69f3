"""Node loss: a node's raylet is killed in the middle of a segment. Its segments resume from their
last checkpoints on other nodes: every output is delivered exactly once, equals an undisturbed run,
and the work redone is at most one segment per interrupted shard.

Nothing here is timed: the driver (raylet_chaos.py) holds the victim's worker inside a segment and
kills the raylet once the worker says it is there, and the run ends when the job does, so the test
holds on a loaded machine; it gives up only when the driver stops making progress (a hang)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
STALL_S = 300  # the longest a healthy run goes without an event: Ray's start, a node's death noticed


def run_driver(root: Path) -> None:
    """Run raylet_chaos.py until it ends; fail if it makes no progress (no new activity event) for
    STALL_S. A fixed deadline for the whole run would fail a slow, healthy run on a loaded machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FARM_HOME": str(root / "home")}
    script = Path(__file__).with_name("raylet_chaos.py")
    progress, log = root / "progress", root / "driver.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(root)], env=env, stdout=err, stderr=err,
                                start_new_session=True)  # its Ray processes too can be killed as a group
    last, since = "", time.monotonic()
    while True:
        try:
            code = proc.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = progress.read_text() if progress.exists() else ""
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the driver made no progress for {STALL_S} s (last: {last or 'starting'!r}):\n"
                        + log.read_text()[-3000:])
    assert code == 0, log.read_text()[-3000:]


def test_killed_raylet_mid_segment_loses_at_most_that_segment(tmp_path: Path) -> None:
    run_driver(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    calm, chaos = report["calm"], report["chaos"]
    assert calm["status"] == chaos["status"] == "done"
    assert chaos["killed"], "the raylet was never killed mid-segment"
    held = chaos["held"]
    victim = held["node"]
    assert chaos["killed"].startswith(f"{held['shard']}#{held['index']} ")
    assert 0 < held["start"] < held["step"] <= held["end"], "the victim was not mid-way through a resumed segment"
    assert chaos["nodes"][victim] == "offline"
    lost = [e for e in chaos["events"] if e[0] == "node_lost"]
    assert len(lost) == 1 and lost[0][1] == victim

    # Every output exactly once, and the same pixels as the undisturbed run.
    assert len(chaos["outputs"]) == len(set(chaos["outputs"])) == 6
    names = lambda run: {Path(p).name: Path(p) for p in run["outputs"]}  # noqa: E731
    for name, path in names(chaos).items():
        a = np.asarray(Image.open(path).convert("RGB"))
        b = np.asarray(Image.open(names(calm)[name]).convert("RGB"))
        assert np.array_equal(a, b), f"{name} differs from the undisturbed run"

    # Redone work, in (sample, step) pairs handed to nodes: the calm run hands each out once; the
    # chaos run hands out twice exactly the steps of the segment that was running on the victim
    # (under its shard id again, or a new one if a replan placed its samples anew), nothing more.
    def handed(run: dict) -> Counter:
        return Counter((sample, step) for seg in run["handed"] for sample in seg["samples"]
                       for step in range(seg["start"], seg["end"]))

    every = {(sample, step) for sample in range(6) for step in range(12)}
    assert handed(calm) == Counter(every)
    twice = {pair for pair, n in handed(chaos).items() if n > 1}
    assert set(handed(chaos)) == every and max(handed(chaos).values()) == 2
    assert twice == {(sample, step) for sample in held["samples"] for step in range(held["start"], held["end"])}
    assert [seg for seg in chaos["handed"] if seg["node"] == victim][-1]["segment"] == chaos["killed"].split()[0]
