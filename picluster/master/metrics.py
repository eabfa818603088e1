"""
The master's Prometheus metrics, read from the registry at scrape time.

A custom collector rather than gauges set as messages arrive: the master
already holds every reading, so a scrape walks the registry once and a
vitals message costs nothing extra.  Each master has its own
L{CollectorRegistry}, so two masters in one process (tests, the demo) never
mix their figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from picluster.master import views

if TYPE_CHECKING:
    from picluster.master.views import MasterState

#: Per-slave gauges: metric name, help, the summary key it reads.
SLAVE_GAUGES = (
    ("cpu_percent", "CPU use of the slave, in percent", "cpu_percent"),
    ("temperature_celsius", "CPU temperature of the slave", "temperature"),
    ("ram_free_bytes", "RAM available on the slave", "ram_free"),
    ("ram_total_bytes", "RAM of the slave", "ram_total"),
    ("disk_free_bytes", "Free space on the slave's root file system", "disk_free"),
    ("disk_total_bytes", "Size of the slave's root file system", "disk_total"),
    ("uptime_seconds", "Seconds since the slave booted", "uptime"),
    ("under_voltage", "1 while the slave's supply is too low", "under_voltage"),
    ("throttled", "1 while the slave's firmware holds it back", "throttled"),
    ("running_tasks", "Tasks running on the slave", "running_tasks"),
    ("ready_tasks", "Tasks the slave holds ready beyond its slots (prefetch)", "ready_tasks"),
    ("slots", "Tasks the slave runs at once", "slots"),
    ("last_seen_timestamp_seconds", "When the master last heard from the slave", "last_seen"),
)

#: Wire totals: metric name (without _total), help, the key in WireStats.totals().
WIRE_COUNTERS = (
    ("connections", "Connections accepted", "connections"),
    ("disconnections", "Connections lost or closed", "disconnections"),
    ("reconnections", "Slaves that came back under their earlier uuid", "reconnections"),
    ("bad_messages", "Messages refused as malformed or unknown", "bad_messages"),
    ("frames_received", "Frames received", "frames_in"),
    ("frames_sent", "Frames sent", "frames_out"),
)


class ClusterCollector:
    """Yields the cluster's metrics from the master's registry and scheduler."""

    def __init__(self, master: MasterState):
        self.master = master

    def collect(self) -> Iterator[Metric]:
        master = self.master
        summaries = [views.slave_summary(node, master) for node in views.nodes(master)]
        connected = [s for s in summaries if s["state"] == "connected"]
        labels = ["uuid", "hostname"]

        up = GaugeMetricFamily(
            "picluster_slave_connected", "1 for a connected slave, 0 for one that left lately",
            labels=labels,
        )
        for summary in summaries:
            up.add_metric(_labels(summary), 1 if summary["state"] == "connected" else 0)
        yield up

        info = GaugeMetricFamily(
            "picluster_slave_info", "Facts about each connected slave (always 1)",
            labels=[*labels, "model", "os", "address"],
        )
        for summary in connected:
            info.add_metric(
                [*_labels(summary), summary["model"] or "", summary["os"] or "", summary["address"]], 1
            )
        yield info

        for name, help_text, key in SLAVE_GAUGES:
            gauge = GaugeMetricFamily(f"picluster_slave_{name}", help_text, labels=labels)
            for summary in connected:
                value = summary[key]
                if value is not None:
                    gauge.add_metric(_labels(summary), float(value))
            yield gauge

        rtt = GaugeMetricFamily(
            "picluster_slave_rtt_seconds", "Latest keepalive round trip to the slave", labels=labels
        )
        for summary in connected:
            if summary["rtt_ms"] is not None:
                rtt.add_metric(_labels(summary), summary["rtt_ms"] / 1000.0)
        yield rtt

        load = GaugeMetricFamily(
            "picluster_slave_load_average", "Load average of the slave",
            labels=[*labels, "minutes"],
        )
        for summary in connected:
            if summary["load_average"] is not None:
                for minutes, value in zip(("1", "5", "15"), summary["load_average"]):
                    load.add_metric([*_labels(summary), minutes], value)
        yield load

        slaves = GaugeMetricFamily("picluster_slaves", "Slaves by state", labels=["state"])
        slaves.add_metric(["connected"], len(connected))
        slaves.add_metric(["left"], len(summaries) - len(connected))
        yield slaves

        factory = master.factory
        totals = factory.stats.totals(c.protocol for c in factory.connections)
        for name, help_text, key in WIRE_COUNTERS:
            yield CounterMetricFamily(f"picluster_{name}", help_text, value=totals[key])

        tasks = GaugeMetricFamily("picluster_tasks", "Tasks by state", labels=["state"])
        for state, count in master.scheduler.view.state_counts().items():
            tasks.add_metric([state], count)
        yield tasks

        if master.started_at is not None:
            yield GaugeMetricFamily(
                "picluster_master_start_time_seconds", "When the master started",
                value=master.started_at,
            )
        yield from _influx_metrics(master.influx)


def _labels(summary: dict[str, Any]) -> list[str]:
    return [summary["uuid"], summary["hostname"] or ""]


def _influx_metrics(influx: Any) -> Iterator[Metric]:
    if influx is None:
        return
    yield CounterMetricFamily(
        "picluster_influxdb_points_written", "Points written to InfluxDB",
        value=influx.points_written,
    )
    yield CounterMetricFamily(
        "picluster_influxdb_points_dropped", "Points dropped while InfluxDB was unreachable",
        value=influx.points_dropped,
    )
    yield GaugeMetricFamily(
        "picluster_influxdb_points_pending", "Points waiting to be written to InfluxDB",
        value=influx.pending,
    )


def collector_registry(master: MasterState) -> CollectorRegistry:
    """A registry of the cluster's metrics and the master process's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(master))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
