"""Head crash: the process running the coordinator is killed with SIGKILL in the middle of a job and
started again from its store. No job is lost, nothing finished is rendered again, the job completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.core.state import FarmState
from farm.runtime.outputs import read_provenance
from farm.runtime.store import Store

pytestmark = pytest.mark.slow


def farm(*args: str, cwd: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "FARM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "farm.cli.main", *args], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_job_then_resume_finishes_without_rendering_twice(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('prompts = ["a red circle", "a blue square", "a green triangle", "a white circle"]\n'
                   "seeds = 3\nsteps = 24\n")
    state, out, home = tmp_path / "state", tmp_path / "out", tmp_path / "home"
    first = farm("run", str(job), "--state", str(state), "--out", str(out), cwd=tmp_path, home=home)
    deadline = time.monotonic() + 240
    while not list(out.glob("*/*.png")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the head and the Ray processes it started
    first.wait()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*/*.png")}
    assert 0 < len(before) < 12, "the kill must land mid-job"

    second = farm("resume", "--state", str(state), "--out", str(out), "--json", cwd=tmp_path, home=home)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    after = sorted(out.glob("*/*.png"))
    assert len(after) == 12
    for path, (data, mtime) in before.items():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, f"{path.name} was rendered again"
    assert {read_provenance(p)["sample"] for p in after} == set(range(12))
    (stored,) = Store(state).restore(FarmState()).jobs.values()
    assert stored.status == "done" and len(stored.outputs) == 12
