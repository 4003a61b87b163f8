"""``/metrics`` in the Prometheus text format, computed at each scrape.

Most numbers come from the ledger, so they count what every process did (the node, its
receiving processes, every worker) and survive restarts; the queues come from the broker,
associations from this node process. The metrics (all prefixed ``pacs_ai_``):

================================== ======================================================
instances_received_total           counter: instances stored, by calling AE and SOP class
received_bytes_total               counter: their bytes, by calling AE and SOP class
node_associations_total            counter: associations accepted/rejected (this node)
node_instances_total               counter: stored/quarantined/refused (this node)
jobs                               gauge: jobs by state (DISCARDED included) and model
series                             gauge: series by state (UNROUTED: no rule matched)
stage_duration_seconds             histogram: per stage and model, of runs that ended DONE
turnaround_seconds                 histogram: last image -> results accepted, per model
                                   and route
delivery_attempts_total            counter: C-STORE / STOW-RS attempts per destination
delivery_failures_total            counter: failed attempts per destination
outbox_items                       gauge: PENDING, DEAD, REJECTED items per destination
destination_misconfigured          gauge: 1 while a destination rejects our association
                                   permanently (our or its AE title not recognised)
queue_depth                        gauge: messages waiting per queue and priority
queue_oldest_age_seconds           gauge: age of the longest-waiting job per queue/priority
queue_unacked                      gauge: messages taken by a worker, not yet acknowledged
broker_up                          gauge: 1 when the broker answered this scrape
worker_up                          gauge: 1 while a worker's heartbeat is fresh
worker_heartbeat_age_seconds       gauge
worker_jobs_done_total             counter: jobs a worker process finished
worker_gpu_memory_used_bytes       gauge (GPU workers), and ..._total_bytes
worker_gpu_utilisation_ratio       gauge, where NVML tells
quarantine_records                 gauge: by stage (receive, identity: refused at the door)
node_up                            gauge: 1 while a pacs-ai serve process's heartbeat is
                                   fresh (any node sharing the ledger)
spool_disk_{total,used,free}_bytes gauge, and spool_disk_reserve_bytes
scrape_errors                      gauge: 1 for a part that could not be read this time
================================== ======================================================

The histograms observe each run that ended DONE once (keyed by job and time), from
:data:`OVERLAP_SECONDS` before the node started onwards (like any process's histogram
they start empty; reading a large ledger's whole history at the first scrape took
12 s for 50,000 jobs, beyond Prometheus's scrape timeout); stage definitions are those of
:mod:`core.ledger.timeline`. Several nodes sharing one ledger export the same ledger-wide
numbers: scrape one of them for those (or aggregate with ``max``).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from pydicom.uid import UID

from core.jobs import SeriesState
from core.ledger import DISPLAY_STATES, STAGES
from monitor.health import node_check
from monitor.readings import Readings

logger = logging.getLogger(__name__)

BUCKETS: tuple[float, ...] = (
    0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600, 7200, 21600,
)  # fmt: skip
#: DONE transitions this far behind the newest one seen are read again at the next scrape
#: (a transaction may commit a little after the time it recorded).
OVERLAP_SECONDS = 300.0
NodeStats = Callable[[], Mapping[str, int]]


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        out = []
        for bound, count in zip((*BUCKETS, math.inf), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == math.inf else f"{bound:g}", float(cumulative)))
        return out


class RunHistograms:
    """Stage and turnaround histograms of DONE runs, updated from the ledger at each
    scrape (only the runs that ended since the last one are read)."""

    def __init__(self, readings: Readings) -> None:
        self._readings = readings
        self._lock = threading.Lock()
        self._watermark: float | None = readings.now()
        self._seen: dict[tuple[str, float], float] = {}
        self.stages: dict[tuple[str, str], _Histogram] = {}
        self.turnaround: dict[tuple[str, str], _Histogram] = {}

    def update(self) -> None:
        with self._lock:
            self._update()

    def _update(self) -> None:
        ledger = self._readings.ledger
        since = -math.inf if self._watermark is None else self._watermark - OVERLAP_SECONDS
        done = ledger.done_transitions(after=since)
        new = [key for key in done if key not in self._seen]
        for start in range(0, len(new), 500):
            self._observe(new[start : start + 500])
        if done:
            self._watermark = max(self._watermark or -math.inf, done[-1][1])
        if self._watermark is not None:
            horizon = self._watermark - 2 * OVERLAP_SECONDS
            self._seen = {k: at for k, at in self._seen.items() if at >= horizon}

    def _observe(self, runs: list[tuple[str, float]]) -> None:
        self._seen.update((key, key[1]) for key in runs)
        for run in self._readings.ledger.done_runs(runs):
            for stage, seconds in run.times.durations().items():
                if seconds is not None:
                    self.stages.setdefault((stage, run.model_id), _Histogram()).observe(seconds)
            if run.times.turnaround is not None:
                key = (run.model_id, run.route)
                self.turnaround.setdefault(key, _Histogram()).observe(run.times.turnaround)


class LedgerCollector(Collector):
    """A ``prometheus_client`` collector that reads everything at scrape time."""

    def __init__(self, readings: Readings, *, node_stats: NodeStats | None = None) -> None:
        self.readings = readings
        self.node_stats = node_stats
        self.runs = RunHistograms(readings)

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily(
            "pacs_ai_scrape_errors", "1 for a part that could not be read", labels=["part"]
        )
        parts: list[tuple[str, Callable[[], list[Metric]]]] = [
            ("counters", self._counters),
            ("node", self._node),
            ("jobs", self._jobs),
            ("series", self._series),
            ("histograms", self._histograms),
            ("outbox", self._outbox),
            ("queues", self._queues),
            ("workers", self._workers),
            ("nodes", self._nodes),
            ("quarantine", self._quarantine),
            ("disk", self._disk),
        ]
        for name, part in parts:
            try:
                yield from part()
                errors.add_metric([name], 0.0)
            except Exception:
                # One unreadable part (the ledger locked, the broker away) must not hide
                # the others from Prometheus; the log says why.
                logger.warning("metrics: cannot read %s", name, exc_info=True)
                errors.add_metric([name], 1.0)
        yield errors

    def _counters(self) -> list[Metric]:
        families = {
            "instances_received": CounterMetricFamily(
                "pacs_ai_instances_received",
                "Instances stored by the node, by calling AE title and SOP class",
                labels=["calling_ae", "sop_class"],
            ),
            "bytes_received": CounterMetricFamily(
                "pacs_ai_received_bytes",
                "Bytes of the instances stored, by calling AE title and SOP class",
                labels=["calling_ae", "sop_class"],
            ),
            "delivery_attempts": CounterMetricFamily(
                "pacs_ai_delivery_attempts",
                "Attempts to deliver an outbox item, per destination",
                labels=["destination"],
            ),
            "delivery_failures": CounterMetricFamily(
                "pacs_ai_delivery_failures",
                "Failed delivery attempts, per destination",
                labels=["destination"],
            ),
        }
        for (name, labels_json), value in sorted(self.readings.counters(families).items()):
            labels = json.loads(labels_json)
            family = families[name]
            if "sop_class_uid" in labels:
                family.add_metric(
                    [labels["calling_ae"], sop_class_name(labels["sop_class_uid"])], value
                )
            else:
                family.add_metric([labels.get("destination", "")], value)
        return list(families.values())

    def _node(self) -> list[Metric]:
        if self.node_stats is None:
            return []
        stats = self.node_stats()
        associations = CounterMetricFamily(
            "pacs_ai_node_associations",
            "DICOM associations this node process accepted or rejected since it started",
            labels=["outcome"],
        )
        associations.add_metric(["accepted"], float(stats.get("associations", 0)))
        associations.add_metric(["rejected"], float(stats.get("rejected", 0)))
        instances = CounterMetricFamily(
            "pacs_ai_node_instances",
            "C-STORE requests this node process answered, by outcome, since it started",
            labels=["outcome"],
        )
        for outcome in ("stored", "quarantined", "refused"):
            instances.add_metric([outcome], float(stats.get(outcome, 0)))
        return [associations, instances]

    def _jobs(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "pacs_ai_jobs", "Jobs in the ledger by state and model", labels=["state", "model"]
        )
        counts = self.readings.job_counts()
        models = {model for _state, model in counts} | {
            m for route in self.readings.settings.routes for m in route.models
        }
        for model in sorted(models):
            for state in DISPLAY_STATES:
                family.add_metric([state, model], float(counts.get((state, model), 0)))
        return [family]

    def _series(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "pacs_ai_series",
            "Received series by state (UNROUTED: no routing rule matched)",
            labels=["state"],
        )
        counts = self.readings.ledger.series_counts()
        for state in SeriesState:
            family.add_metric([state.value], float(counts.get(state.value, 0)))
        return [family]

    def _nodes(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "pacs_ai_node_up", "1 while a pacs-ai serve process's heartbeat is fresh"
        )
        check = node_check(self.readings)
        family.add_metric([], 1.0 if check.ok else 0.0)
        return [family]

    def _histograms(self) -> list[Metric]:
        self.runs.update()
        stages = HistogramMetricFamily(
            "pacs_ai_stage_duration_seconds",
            "Seconds per stage of runs that ended DONE (receive, complete, queue, infer, deliver)",
            labels=["stage", "model"],
        )
        for (stage, model), histogram in sorted(
            self.runs.stages.items(), key=lambda kv: (STAGES.index(kv[0][0]), kv[0][1])
        ):
            stages.add_metric([stage, model], histogram.buckets(), histogram.total)
        turnaround = HistogramMetricFamily(
            "pacs_ai_turnaround_seconds",
            "Last image received -> results accepted by the PACS, per model and route",
            labels=["model", "route"],
        )
        for (model, route), histogram in sorted(self.runs.turnaround.items()):
            turnaround.add_metric([model, route], histogram.buckets(), histogram.total)
        return [stages, turnaround]

    def _outbox(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "pacs_ai_outbox_items",
            "Outbox items waiting (PENDING) or given up on (DEAD, REJECTED), per destination",
            labels=["destination", "state"],
        )
        misconfigured = GaugeMetricFamily(
            "pacs_ai_destination_misconfigured",
            "1 while the destination rejects our association permanently (AE title)",
            labels=["destination"],
        )
        for view in self.readings.destinations():
            family.add_metric([view.name, "PENDING"], float(view.backlog))
            family.add_metric([view.name, "DEAD"], float(view.dead))
            family.add_metric([view.name, "REJECTED"], float(view.rejected))
            misconfigured.add_metric([view.name], 1.0 if view.misconfigured else 0.0)
        return [family, misconfigured]

    def _queues(self) -> list[Metric]:
        up = GaugeMetricFamily("pacs_ai_broker_up", "1 when the broker answered this scrape")
        depth = GaugeMetricFamily(
            "pacs_ai_queue_depth",
            "Messages waiting per model queue and priority (0 most urgent)",
            labels=["queue", "model", "priority"],
        )
        age = GaugeMetricFamily(
            "pacs_ai_queue_oldest_age_seconds",
            "Seconds the longest-waiting job of a queue and priority has been queued",
            labels=["queue", "model", "priority"],
        )
        unacked = GaugeMetricFamily(
            "pacs_ai_queue_unacked",
            "Messages taken by a worker and not yet acknowledged, per queue",
            labels=["queue"],
        )
        reading = self.readings.queues()
        up.add_metric([], 0.0 if reading.error else 1.0)
        for view in reading.queues:
            labels = [view.queue, view.model_id, str(view.priority)]
            depth.add_metric(labels, float(view.depth))
            if view.oldest_age is not None:
                age.add_metric(labels, view.oldest_age)
        for queue, count in sorted(reading.unacked.items()):
            unacked.add_metric([queue], float(count))
        # A broker that does not answer is ``broker_up 0``, not a scrape error.
        return [up, depth, age, unacked]

    def _workers(self) -> list[Metric]:
        now = self.readings.now()
        worker_gpu = ["worker", "gpu"]
        up = GaugeMetricFamily(
            "pacs_ai_worker_up", "1 while the heartbeat is fresh", labels=["worker", "host"]
        )
        age = GaugeMetricFamily(
            "pacs_ai_worker_heartbeat_age_seconds", "Seconds since the heartbeat", labels=["worker"]
        )
        done = CounterMetricFamily(
            "pacs_ai_worker_jobs_done", "Jobs the worker process finished", labels=["worker"]
        )
        used = GaugeMetricFamily(
            "pacs_ai_worker_gpu_memory_used_bytes", "GPU memory in use", labels=worker_gpu
        )
        total = GaugeMetricFamily(
            "pacs_ai_worker_gpu_memory_total_bytes", "GPU memory", labels=worker_gpu
        )
        utilisation = GaugeMetricFamily(
            "pacs_ai_worker_gpu_utilisation_ratio", "GPU busy fraction (NVML)", labels=worker_gpu
        )
        for worker in self.readings.workers():
            up.add_metric([worker.name, worker.host], 1.0 if worker.alive else 0.0)
            age.add_metric([worker.name], max(0.0, now - worker.heartbeat_at))
            status = worker.status
            done.add_metric([worker.name], float(status.jobs_done))
            if status.gpu_name is not None:
                gpu = [worker.name, status.gpu_name]
                if status.gpu_memory_used is not None:
                    used.add_metric(gpu, status.gpu_memory_used)
                if status.gpu_memory_total is not None:
                    total.add_metric(gpu, status.gpu_memory_total)
                if status.gpu_utilisation is not None:
                    utilisation.add_metric(gpu, status.gpu_utilisation)
        return [up, age, done, used, total, utilisation]

    def _quarantine(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "pacs_ai_quarantine_records", "Quarantine records by stage", labels=["stage"]
        )
        for stage, count in self.readings.ledger.quarantine_counts().items():
            family.add_metric([stage], float(count))
        return [family]

    def _disk(self) -> list[Metric]:
        disk = self.readings.disk()
        families: list[Metric] = []
        for name, value, text in (
            ("total", disk.total, "Size of the spool's file system"),
            ("used", disk.used, "Bytes used on the spool's file system"),
            ("free", disk.free, "Bytes free on the spool's file system"),
            ("reserve", disk.reserve, "Free space below which the node refuses instances"),
        ):
            family = GaugeMetricFamily(f"pacs_ai_spool_disk_{name}_bytes", text)
            family.add_metric([], float(value))
            families.append(family)
        return families


def sop_class_name(uid: str) -> str:
    """``CT Image Storage`` for its UID; the UID itself when pydicom does not know it."""
    name = UID(uid).name
    return name if name and name != uid else uid


class MetricsEndpoint:
    """The registry ``/metrics`` renders (only our collector: no process metrics of the
    HTTP server's own, which would say nothing about pacs-ai)."""

    def __init__(self, readings: Readings, *, node_stats: NodeStats | None = None) -> None:
        self.collector = LedgerCollector(readings, node_stats=node_stats)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
