"""
C{twistd picluster-slave}: join a master and stay joined.
"""

from __future__ import annotations

from twisted.python import usage

from picluster import address, config
from picluster.slave import SlaveFactory, SlaveService


class Options(config.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a picluster slave: connect to the master at --master, report this"
        " machine's facts and vitals, and reconnect whenever the master goes."
    )
    section = "slave"
    settings = [
        config.Setting(
            "master", address.parse_master, "tcp:host=127.0.0.1:port=12345",
            "The master's endpoint: tcp:host=HOST:port=PORT or HOST:PORT",
        ),
        *config.COMMON_SETTINGS,
        config.Setting("vitals", config.seconds, 60.0, "Seconds between vitals reports"),
        config.Setting(
            "initial-delay", config.seconds, 1.0, "Seconds before the first reconnection attempt"
        ),
        config.Setting("max-delay", config.seconds, 60.0, "Longest wait between reconnection attempts, before jitter"),
    ]
    optParameters = [setting.as_parameter() for setting in settings]

    def translate_legacy(self, from_file: dict[str, str]) -> dict[str, str]:
        """Accept the tutorial's C{master_ip} and C{socket_port}."""
        host = from_file.pop("master_ip", None)
        port = from_file.pop("socket_port", None)
        if (host or port) and "master" not in from_file:
            self.file_key_names["master"] = "master_ip/socket_port"
            host = (host or "127.0.0.1").strip().strip("[]")
            host = f"[{host}]" if ":" in host else host
            from_file["master"] = f"{host}:{(port or '12345').strip()}"
        return from_file

    def check(self) -> None:
        super().check()
        if isinstance(self["master"], str):
            self["master"] = address.parse_master(self["master"])
        if self["max-delay"] < self["initial-delay"]:
            raise usage.UsageError(
                f"--max-delay ({self['max-delay']:g} s) must not be shorter than"
                f" --initial-delay ({self['initial-delay']:g} s)"
            )


def makeService(options: Options) -> SlaveService:
    factory = SlaveFactory(
        options["master"],
        vitals_interval=options["vitals"],
        initial_delay=options["initial-delay"],
        max_delay=options["max-delay"],
        keepalive=options["keepalive"],
        dead_after=options["dead-after"],
        max_frame=options["max-frame"],
    )
    return SlaveService(factory)
