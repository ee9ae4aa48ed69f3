"""Prometheus metrics: the collector's view of a farm, the metered executor's per-segment facts, and a
real Prometheus server scraping a running farm's `/metrics` and answering a query about it."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from fake_farm import FakeFarm
from http_harness import PROMPT, Served
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from farm.api.metrics import FarmMetrics
from farm.contracts.domain import JobStatus, SegmentResult, SegmentTask, StepEvent
from farm.contracts.errors import NodeLost
from farm.jobs.jobspec import make_job
from farm.runtime.executor import RayExecutor
from farm.runtime.metered import MeteredExecutor


def samples(metrics: FarmMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render()[0].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_collector_reads_jobs_nodes_and_telemetry_at_scrape_time() -> None:
    farm = FakeFarm()
    farm.nodes["pc1"] = replace(farm.nodes["pc1"], vram_used_gib=3.0, utilization=0.5, power_w=120.0)
    metrics = FarmMetrics()
    metrics.watch(farm)
    ana = farm.submit(make_job(prompts=["a"], seeds=3, steps=4, owner="ana"))
    farm.submit(make_job(prompts=["b"], seeds=1, steps=4, owner="bob"))
    farm.submit(make_job(prompts=["c"], seeds=1, steps=4, owner="bob"))
    farm.jobs[ana] = replace(farm.jobs[ana], status=JobStatus.DONE, samples_done=3, steps_done=12)
    got = samples(metrics)
    assert got[("farm_jobs", (("state", "done"),))] == 1 and got[("farm_jobs", (("state", "queued"),))] == 2
    assert got[("farm_jobs", (("state", "failed"),))] == 0
    assert got[("farm_samples_completed_total", ())] == 3 and got[("farm_sample_steps_completed_total", ())] == 12
    assert got[("farm_queue_length", (("owner", "bob"),))] == 2
    assert ("farm_queue_length", (("owner", "ana"),)) not in got  # its only job is done
    assert got[("farm_node_state", (("node", "pc2"), ("state", "busy")))] == 1
    assert got[("farm_node_state", (("node", "pc2"), ("state", "idle")))] == 0
    pc1 = (("gpu", "0"), ("modelName", "RTX 3060"), ("node", "pc1"))
    assert got[("DCGM_FI_DEV_GPU_TEMP", pc1)] == 51 and got[("DCGM_FI_DEV_GPU_UTIL", pc1)] == 50
    assert got[("DCGM_FI_DEV_FB_USED", pc1)] == 3072 and got[("DCGM_FI_DEV_FB_FREE", pc1)] == 9 * 1024
    assert got[("DCGM_FI_DEV_POWER_USAGE", pc1)] == 120
    assert ("DCGM_FI_DEV_GPU_TEMP", (("gpu", "0"), ("modelName", "unknown"), ("node", "pc2"))) not in got  # no sensor


def test_the_grafana_dashboard_queries_only_metrics_the_farm_exports() -> None:
    dashboard = json.loads((Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(?:farm|DCGM)_\w+", e)}
    farm = FakeFarm()
    farm.nodes["pc1"] = replace(farm.nodes["pc1"], power_w=100.0)
    farm.submit(make_job(prompts=["a"], steps=4))
    metrics = FarmMetrics()
    metrics.watch(farm)
    metrics.work.segment_finished("pc1", "sd15", 3.0, 8, 10)
    metrics.work.work_redone("pc1", 2)
    exported = {name for name, _ in samples(metrics)}
    assert len(exprs) >= 14 and used <= exported, used - exported


class ScriptedExecutor:
    """Segments end when the test says so."""

    def __init__(self) -> None:
        self.done: list[tuple[object, SegmentResult | BaseException]] = []
        self.steps: list[StepEvent] = []

    def nodes(self) -> list:  # type: ignore[type-arg]
        return []

    def submit(self, node: str, task: SegmentTask) -> object:
        return (node, task.shard_id, task.index)

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        done, self.done = self.done, []
        return done

    def step_events(self) -> list[StepEvent]:
        steps, self.steps = self.steps, []
        return steps

    def interrupt(self, node: str) -> None: ...

    def shutdown(self) -> None: ...


def test_the_metered_executor_counts_segments_handoffs_and_redone_work() -> None:
    inner, metrics = ScriptedExecutor(), FarmMetrics()
    metered = MeteredExecutor(inner, metrics.work)
    job = make_job(prompts=["a"], seeds=2, steps=6)
    task = SegmentTask(job, "j/s0", job.samples(), 0, 0, 2, None)
    first = metered.submit("pc1", task)
    inner.done = [(first, SegmentResult("j/s0", 0, "pc1", "gpu", 1.5, checkpoint=b"x" * 100))]
    metered.wait(0)
    second = metered.submit("pc2", replace(task, index=1, start=2, end=4, checkpoint=b"x" * 100))  # handed over
    inner.steps = [StepEvent("pc2", "j/s0", 3, 2)]
    metered.step_events()
    inner.done = [(second, NodeLost("pc2", "gone"))]  # one step of two samples is lost
    metered.wait(0)
    third = metered.submit("pc2", replace(task, index=1, start=2, end=4, checkpoint=b"x" * 100))  # same node: none
    inner.done = [(third, SegmentResult("j/s0", 1, "pc2", "gpu", 40.0))]
    metered.wait(0)
    got = samples(metrics)
    assert got[("farm_segment_seconds_count", (("family", "sd15"), ("node", "pc1")))] == 1
    assert got[("farm_segment_seconds_bucket", (("family", "sd15"), ("le", "45.0"), ("node", "pc2")))] == 1
    assert got[("farm_segment_seconds_bucket", (("family", "sd15"), ("le", "30.0"), ("node", "pc2")))] == 0
    assert got[("farm_work_redone_sample_steps_total", (("node", "pc2"),))] == 2
    assert got[("farm_handoff_bytes_total", (("node", "pc2"),))] == 100
    assert got[("farm_handoff_bytes_total", (("node", "pc1"),))] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path: Path, embedded: RayExecutor) -> Iterator[tuple[str, Served]]:
    """A real Prometheus scraping a farm's HTTP API every second; yields its URL and the farm."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus; .ci/run does it)")
    served = Served(embedded, tmp_path / "renders")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: farm\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{served.http.port}']\n")
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        assert wait_until(ready, timeout=60), (tmp_path / "prometheus.log").read_text()[-2000:]
        yield url, served
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        served.stop()


def query(url: str, promql: str) -> list[dict]:
    r = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


@pytest.mark.slow
def test_prometheus_scrapes_the_farm_and_answers_a_query(prometheus: tuple[str, Served]) -> None:
    url, served = prometheus
    r = served.api.txt2img(prompt=PROMPT, seed=3, steps=4, width=64, height=64, batch_size=2)
    assert len(r.images) == 2
    started = time.monotonic()
    assert wait_until(lambda: query(url, "farm_samples_completed_total >= 2"), timeout=30)
    done = query(url, 'farm_jobs{state="done"}')
    assert done and float(done[0]["value"][1]) >= 1 and done[0]["metric"]["job"] == "farm"
    segments = query(url, "sum(farm_segment_seconds_count)")
    assert float(segments[0]["value"][1]) >= 2  # every shard runs as at least two segments
    assert query(url, "DCGM_FI_DEV_FB_FREE") and query(url, 'up{job="farm"} == 1')
    assert time.monotonic() - started < 30
