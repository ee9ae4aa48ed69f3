"""The `farm` command as a user runs it: bad input is one line and exit 2; a render prints JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.runtime.outputs import read_provenance


def farm(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FARM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(
    "args, field",
    [
        (["render", "x", "--steps", "0"], "steps"),
        (["render", "x", "--steps", "-4"], "steps"),
        (["render", "x", "--width", "100"], "width"),
        (["render", "x", "--height", "1024"], "height"),
        (["render", "x", "--model", "sd-nope"], "model"),
        (["render"], "prompts"),
        (["render", "x", "--seeds", "0"], "seeds"),
        (["render", "x", "--guidance", "-1"], "guidance"),
        (["render", "x", "--steps", "ten"], "--steps"),
        (["render", "x", "--bogus"], "--bogus"),
        (["run", "missing.toml"], "job file"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_renders_nothing(tmp_path: Path, args: list[str], field: str) -> None:
    r = farm(*args, "--out", str(tmp_path / "out"), cwd=tmp_path, home=tmp_path / "home")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert field in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "out").exists()


def test_bad_job_file_names_the_field(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('prompts = ["a red circle"]\nwidth = 12\n')
    r = farm("run", str(job), cwd=tmp_path, home=tmp_path / "home")
    assert r.returncode == 2
    assert r.stderr.strip() == "farm: width: must be a multiple of 8 from 8 to 128 (this model's limit), got 12"


@pytest.mark.slow
def test_render_json_on_the_embedded_farm(tmp_path: Path) -> None:
    r = farm("render", "a red circle on a blue background", "a yellow square", "--seeds", "2", "--steps", "4",
             "--out", "out", "--json", cwd=tmp_path, home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"job_id", "outputs", "nodes"}
    assert len(out["outputs"]) == 4
    for p in out["outputs"]:
        path = tmp_path / p
        assert path.parent == tmp_path / "out" / out["job_id"]
        assert read_provenance(path)["steps"] == 4
    assert sum(n["samples"] for n in out["nodes"].values()) == 4
    assert all({"samples", "segments"} <= set(n) for n in out["nodes"].values())
