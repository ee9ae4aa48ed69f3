"""`farm head` as users run it, with its HTTP API on loopback: a `webuiapi` script renders on it, the
job shows in `farm jobs` with its owner, another PC's `farm fetch` saves the same bytes the API sent,
and `/metrics` counts the samples."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import test_cluster_e2e
import webuiapi
from test_cluster_e2e import free_port, read_line

pytestmark = pytest.mark.slow


class Farm(test_cluster_e2e.Farm):
    def cli_as(self, home: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The farm command on another PC: its own FARM_HOME."""
        return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], env=self.env(home), cwd=self.root,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture
def farm(tmp_path: Path) -> Farm:
    f = Farm(tmp_path)
    yield f  # type: ignore[misc]
    f.stop()


def test_a_head_serves_a1111_clients_metrics_and_remote_fetches(farm: Farm) -> None:
    port = free_port()
    head = farm.spawn("head", "head", "--advertise", "127.0.0.1", "--bind", "127.0.0.1", "--port", "0",
                      "--ray-port", str(free_port()), "--simulate-gpu", "12", "--name", "headpc", "--out", "out",
                      "--http", f"127.0.0.1:{port}")
    assert read_line(head, "A1111-compatible API", timeout=240).endswith(f"on http://127.0.0.1:{port}")
    address = read_line(head, "FARM_TOKEN=", timeout=60).split()[3]
    token = (farm.root / "head" / "head" / "admin-token").read_text().strip()  # the job's owner is `local`

    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    r = api.txt2img(prompt="a white triangle on a black background", seed=11, steps=4, width=64, height=64,
                    batch_size=2, n_iter=1)
    job_id = r.info["job_id"]
    assert r.info["all_seeds"] == [11, 12]
    jobs = [json.loads(line) for line in farm.cli("jobs", "--json").stdout.splitlines()]
    assert [(j["id"], j["owner"], j["status"], j["samples"]) for j in jobs] == [(job_id, "local", "done", "2/2")]

    # Another PC (its own FARM_HOME, no head of its own) fetches the outputs over FarmControl.
    fetched = farm.cli_as("pc2", "fetch", job_id, "--head", address, "--token", token, "--out", "fetched")
    assert fetched.returncode == 0, fetched.stderr
    paths = [farm.root / p for p in fetched.stdout.splitlines()]
    assert [p.read_bytes() for p in paths] == [base64.b64decode(i) for i in r.json["images"]]
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in sorted((farm.root / "out" / job_id).iterdir())]

    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "farm_samples_completed_total 2.0" in metrics and 'farm_jobs{state="done"} 1.0' in metrics
    assert 'DCGM_FI_DEV_FB_FREE{gpu="0",modelName="simulated 12 GiB (CPU)",node="headpc"}' in metrics
    assert "farm_segment_seconds_count" in metrics
