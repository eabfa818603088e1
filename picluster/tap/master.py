"""
C{twistd picluster-master}: listen for slaves.
"""

from __future__ import annotations

from twisted.python import usage

from picluster import config
from picluster.clockwatch import ClockWatch
from picluster.config import server_endpoint
from picluster.master import admission, quotas, retention
from picluster.master.scheduler import DEFAULT_MAX_RESULTS_WAITING
from picluster.master.service import MasterService
from picluster.master.space import DEFAULT_MAX_DB
from picluster.master.taskspec import DEFAULT_MAX_ARGS
from picluster.timebase import monotonic_timers
from picluster.trust.cluster import ClusterTrust, TrustError
from picluster.wire.messages import COMMAND_TASKS
from picluster.wire.protocol import DEFAULT_FRAME_DEADLINE

#: What turns an optional part (the web server, the InfluxDB export) off.
_OFF = ("none", "off", "no", "")


def web_endpoint(text: str) -> str | None:
    """The dashboard's endpoint, or C{None} for C{none}: no web server."""
    if text.strip().lower() in _OFF:
        return None
    return server_endpoint(text)


def influx_url(text: str) -> str | None:
    """The InfluxDB server's base URL, or C{None} for C{none}: no export."""
    if text.strip().lower() in _OFF:
        return None
    # Imported here: treq loads only for a master that exports.
    from picluster.master.influx import influx_url as check

    return check(text)


def database_name(text: str) -> str:
    """An InfluxDB database name (any text; it is quoted where it is used)."""
    if not text.strip():
        raise ValueError("must name a database")
    return text.strip()


def database_path(text: str) -> str:
    """A task database path; whether it opens is checked as the master starts."""
    if not text.strip():
        raise ValueError("must name a file")
    return text


per_second = config.positive_number("tasks a second")


def positive_size(text: str) -> int:
    """A number of bytes, more than none."""
    value = config.byte_size(text)
    if value <= 0:
        raise ValueError(f"must be more than 0 bytes, not {text!r}")
    return value


days = config.positive_number("days")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


class Options(config.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a picluster master: accept slaves on --port, track their machine"
        " facts and vitals, answer questions about the cluster, and hand out"
        " the tasks submitted with the picluster command, queued in --db."
    )
    section = "master"
    settings = [
        config.Setting("port", server_endpoint, "tcp:12345", "Endpoint to listen on for slaves"),
        config.Setting(
            "state-dir", config.directory, ".",
            "Directory of the cluster's CA, the master's certificate and the tokens' secrets"
            " (created on the first start)",
        ),
        config.Setting(
            "insecure", config.boolean, False,
            "Plain mode: no TLS, no tokens, anyone may join (benchmarks and experiments only)",
            flag=True,
        ),
        *config.COMMON_SETTINGS,
        # What a peer can make the master hold (docs: security, "Bounds").
        config.Setting(
            "max-connections", config.whole_number(1, 10_000_000), admission.DEFAULT_MAX_CONNECTIONS,
            "Most connections at once (fewer if the file limit is lower); more are closed at once",
        ),
        config.Setting(
            "max-handshakes", config.whole_number(1, 1_000_000), admission.DEFAULT_MAX_STRANGERS,
            "Most connections at once that have not yet proven a token",
        ),
        config.Setting(
            "max-handshakes-per-host", config.whole_number(1, 1_000_000),
            admission.DEFAULT_MAX_STRANGERS_PER_HOST,
            "Most connections at once from one host that have not yet proven a token",
        ),
        config.Setting(
            "handshake-timeout", config.seconds, admission.DEFAULT_HANDSHAKE_TIMEOUT,
            "Seconds a new connection has to finish TLS and prove a token",
        ),
        config.Setting(
            "frame-deadline", config.seconds, DEFAULT_FRAME_DEADLINE,
            "Seconds a frame may take to arrive, first byte to last",
        ),
        config.Setting(
            "max-queued", config.byte_size, None,
            "Bytes that may wait for a peer that does not read before it is dropped"
            " (8 x --max-frame when unset)",
        ),
        config.Setting(
            "db", database_path, "picluster.db",
            "SQLite file holding the task queue (created if missing)",
        ),
        config.Setting(
            "rejoin-grace", config.seconds, 30.0,
            "After a restart, seconds a running task waits for its slave to rejoin and claim it",
        ),
        config.Setting(
            "max-args", config.frame_size, DEFAULT_MAX_ARGS,
            "Largest JSON arguments of one task, in bytes (K and M allowed)",
        ),
        config.Setting(
            "quota-open", config.whole_number(1, 10**9), quotas.DEFAULT_QUOTA_OPEN,
            "Open (queued or running) tasks one submitter may have",
        ),
        config.Setting(
            "quota-args", positive_size, quotas.DEFAULT_QUOTA_ARGS,
            "Bytes of arguments one submitter's open tasks may hold (K, M and G allowed)",
        ),
        config.Setting(
            "quota-rate", per_second, quotas.DEFAULT_QUOTA_RATE,
            "New tasks a second one submitter may submit, on average",
        ),
        config.Setting(
            "quota-burst", config.whole_number(1, 10**9), quotas.DEFAULT_QUOTA_BURST,
            "New tasks one submitter may submit at once, beyond --quota-rate",
        ),
        config.Setting(
            "keep-finished", config.whole_number(0, 10**9), retention.DEFAULT_KEEP,
            "Finished tasks kept in --db, the newest; older ones are pruned",
        ),
        config.Setting(
            "keep-finished-days", days, retention.DEFAULT_KEEP_DAYS,
            "Days a finished task is kept in --db before it is pruned",
        ),
        config.Setting(
            "max-db", positive_size, DEFAULT_MAX_DB,
            "Size of --db (with its log) past which new tasks are refused (K, M and G allowed)",
        ),
        config.Setting(
            "max-results-waiting", positive_size, DEFAULT_MAX_RESULTS_WAITING,
            "Bytes of task results, from all slaves, that may wait to be written before slaves"
            " that send more are not read until the disk catches up (K, M and G allowed)",
        ),
        config.Setting(
            "web", web_endpoint, config.DEFAULT_WEB,
            "Endpoint of the dashboard, JSON API and /metrics; none to turn it off",
        ),
        config.Setting(
            "web-public", config.boolean, False,
            "Serve the dashboard beyond loopback without asking for the read-only token",
            flag=True,
        ),
        config.Setting(
            "forget-after", config.seconds, 3600.0,
            "Seconds a slave that left stays listed (greyed) on the dashboard",
        ),
        config.Setting(
            "influxdb", influx_url, None,
            "Also write every slave's vitals to the InfluxDB 1.x server at this URL",
        ),
        config.Setting("influxdb-db", database_name, "picluster", "InfluxDB database to write to"),
        config.Setting(
            "influxdb-interval", config.seconds, 10.0, "Seconds between two writes to InfluxDB"
        ),
    ]
    optParameters = config.parameters(settings)
    optFlags = config.flags(settings)

    def translate_legacy(self, from_file: dict[str, str]) -> dict[str, str]:
        """Accept the tutorial's C{socket_port} and C{socket_bind_ip}."""
        port = from_file.pop("socket_port", None)
        interface = from_file.pop("socket_bind_ip", "")
        if (port is not None or interface.strip()) and "port" not in from_file:
            self.file_key_names["port"] = "socket_port/socket_bind_ip"
            description = f"tcp:{(port or '12345').strip()}"
            if interface.strip():
                description += f":interface={_escape(interface.strip())}"
            from_file["port"] = description
        return from_file


    def check(self) -> None:
        super().check()
        if self["max-queued"] is not None and self["max-queued"] < self["max-frame"]:
            raise usage.UsageError(
                f"--max-queued ({self['max-queued']} bytes) must be at least --max-frame"
                f" ({self['max-frame']} bytes): a peer must be able to be sent one whole frame"
            )
        # A task's arguments travel inside one run_task frame, with room for
        # the rest of the envelope.
        if self["max-args"] > self["max-frame"] - 1024:
            if self["max-args"] == DEFAULT_MAX_ARGS:
                # Only --max-frame was lowered: lower the default with it.
                self["max-args"] = max(2, self["max-frame"] // 2)
                return
            raise usage.UsageError(
                f"--max-args ({self['max-args']} bytes) must be at least 1024 bytes"
                f" smaller than --max-frame ({self['max-frame']} bytes)"
            )


def cluster_trust(state_dir: str) -> ClusterTrust:
    """The state directory's trust material, made on the first start; exits on a problem."""
    try:
        return ClusterTrust.open(state_dir)
    except TrustError as e:
        raise SystemExit(f"picluster-master: {e}") from e


def makeService(options: Options) -> MasterService:
    from twisted.internet import reactor

    # Timers keep to the monotonic clock: a step of the system clock (a Pi's
    # first NTP sync) moves no keepalive, deadline or task timeout.
    monotonic_timers(reactor)
    try:
        return _master_service(options)
    except TrustError as e:
        raise SystemExit(f"picluster-master: {e}") from e


def _master_service(options: Options) -> MasterService:
    master = MasterService(
        options["port"],
        trust=None if options["insecure"] else cluster_trust(options["state-dir"]),
        keepalive=options["keepalive"],
        dead_after=options["dead-after"],
        max_frame=options["max-frame"],
        max_connections=admission.connection_cap(
            options["max-connections"], admission.raise_file_limit()),
        max_strangers=options["max-handshakes"],
        max_strangers_per_host=options["max-handshakes-per-host"],
        handshake_timeout=None if options["insecure"] else options["handshake-timeout"],
        frame_deadline=options["frame-deadline"],
        max_queued=options["max-queued"],
        db=options["db"],
        rejoin_grace=options["rejoin-grace"],
        max_args=options["max-args"],
        task_limits={
            "quota_open": options["quota-open"], "quota_args": options["quota-args"],
            "quota_rate": options["quota-rate"], "quota_burst": options["quota-burst"],
            "keep_finished": options["keep-finished"],
            "keep_finished_days": options["keep-finished-days"], "max_db": options["max-db"],
            "max_results_waiting": options["max-results-waiting"],
        },
        web=options["web"],
        web_public=options["web-public"],
        forget_after=options["forget-after"],
        influxdb=options["influxdb"],
        influxdb_db=options["influxdb-db"],
        influxdb_interval=options["influxdb-interval"],
    )
    if options["insecure"]:
        # Anyone may submit to a plain master: nothing that runs commands.
        master.scheduler.refused_tasks = {
            name: f"{name} is refused by a master in plain mode (--insecure): anyone can reach it"
            for name in COMMAND_TASKS
        }
    # Said in the log: a step of the system clock (a Pi's first NTP sync).
    ClockWatch(master.reactor).setServiceParent(master)
    return master
