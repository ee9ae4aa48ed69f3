"""Prometheus metrics of a farm: GPU telemetry under the names of NVIDIA's DCGM exporter, so
existing GPU dashboards work, and `farm_*` metrics of the queue and the work.

What a `FarmService` view holds is read at scrape time (`FarmCollector`): jobs by state, samples and
sample-steps completed, node state, queue length by owner, and each node's telemetry. What only a
moment knows (a segment's seconds, the work a failure throws away, the checkpoint bytes handed to
another node) is counted as it happens by `WorkMetrics`, the `WorkObserver` the head's metered
executor calls.
"""

from __future__ import annotations

import logging
import re
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from farm.contracts.control import FarmService, NodeStatus
from farm.contracts.domain import JobStatus
from farm.contracts.errors import FarmError

log = logging.getLogger(__name__)
GIB_MIB = 1024.0
# A segment is planned at about 30 s on its node; the buckets span a fast card's seconds to a slow
# card's long video segment.
SEGMENT_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800)
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)


def _gpu_index(node: str) -> str:
    """A node is `<pc>` (one GPU) or `<pc>-gpu<i>` (`farm.cluster.membership.nodes_for`): DCGM's `gpu`."""
    m = re.search(r"-gpu(\d+)$", node)
    return m.group(1) if m else "0"


class FarmCollector(Collector):
    """Reads the service's jobs and nodes at each scrape."""

    def __init__(self, service: FarmService) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            jobs, nodes = self.service.list_jobs(), self.service.list_nodes()
        except FarmError as e:  # a scrape answers what it can; the farm's own log says why
            log.warning("metrics: cannot read the farm: %s", e)
            return
        states = Tally(j.status for j in jobs)
        by_state = GaugeMetricFamily("farm_jobs", "Jobs in each state.", labels=["state"])
        for status in JobStatus:
            by_state.add_metric([str(status)], states[status])
        yield by_state
        yield CounterMetricFamily("farm_samples_completed", "Samples written (images or videos).",
                                  value=sum(j.samples_done for j in jobs))
        yield CounterMetricFamily("farm_sample_steps_completed", "Denoising steps rendered, times batch size.",
                                  value=sum(j.steps_done for j in jobs))
        queue = GaugeMetricFamily("farm_queue_length", "Unfinished jobs (queued, running, paused) per owner.",
                                  labels=["owner"])
        for owner, count in sorted(Tally(j.spec.owner for j in jobs if j.status in UNFINISHED).items()):
            queue.add_metric([owner], count)
        yield queue
        node_state = GaugeMetricFamily("farm_node_state", "1 for each node's current state.", labels=["node", "state"])
        for n in nodes:
            for status in NodeStatus:
                node_state.add_metric([n.info.name, str(status)], 1.0 if n.status == status else 0.0)
        yield node_state
        yield from self._gpus(nodes)

    def _gpus(self, nodes: list) -> Iterator[GaugeMetricFamily]:  # type: ignore[type-arg]
        labels = ["node", "gpu", "modelName"]
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=labels)
        used = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=labels)
        free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free within the node's VRAM budget "
                                                        "(in MiB).", labels=labels)
        temp = GaugeMetricFamily("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels=labels)
        power = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=labels)
        for n in nodes:
            key = [n.info.name, _gpu_index(n.info.name), n.info.gpu]
            util.add_metric(key, n.utilization * 100.0)
            used.add_metric(key, n.vram_used_gib * GIB_MIB)
            free.add_metric(key, max(n.info.vram_gib - n.vram_used_gib, 0.0) * GIB_MIB)
            if n.temperature_c is not None:
                temp.add_metric(key, n.temperature_c)
            if n.power_w is not None:
                power.add_metric(key, n.power_w)
        yield from (util, used, free, temp, power)


class WorkMetrics:
    """A `WorkObserver` that counts segments, redone work and hand-offs into `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.segment_seconds = Histogram("farm_segment_seconds", "Wall time of a segment on its node.",
                                         ["node", "family"], buckets=SEGMENT_BUCKETS, registry=registry)
        self.redone = Counter("farm_work_redone_sample_steps", "Sample-steps rendered again after a segment "
                              "failed or lost its node.", ["node"], registry=registry)
        self.handoff = Counter("farm_handoff_bytes", "Checkpoint bytes a node received from another node.",
                               ["node"], registry=registry)

    def segment_finished(self, node: str, family: str, seconds: float, sample_steps: int,
                         handoff_bytes: int) -> None:
        self.segment_seconds.labels(node, family).observe(seconds)
        self.handoff.labels(node).inc(handoff_bytes)

    def work_redone(self, node: str, sample_steps: int) -> None:
        self.redone.labels(node).inc(sample_steps)


class FarmMetrics:
    """One farm's metrics: a registry of its own (two farms in one process, as in tests, never mix).

    `work` exists first, because the executor that feeds it is made before the service it meters;
    `watch` then adds the service's views."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.work = WorkMetrics(self.registry)

    def watch(self, service: FarmService) -> None:
        self.registry.register(FarmCollector(service))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for `GET /metrics`."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
