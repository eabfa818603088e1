"""
Machine facts and vitals for the cluster's nodes.

A slave sends L{computer_details} once at start and L{VitalsSampler} samples
periodically; the master reports its own L{computer_details}.  Values are plain
JSON types and a reading that fails is C{None} rather than failing the report:
a Pi with a locked-down sysfs should still say how much RAM it has.

Nothing may block the reactor: CPU usage is C{cpu_percent(interval=None)}
(usage since the previous call) and C{vcgencmd} runs asynchronously.  Files
are read below C{root} so tests can use a fake tree; psutil always describes
the real machine.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import socket
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import psutil  # type: ignore[import-untyped]  # no stubs of its own; types-psutil is no dependency
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from picluster._version import __version__
from picluster.timebase import wall_time

log = Logger()

_T = TypeVar("_T")

_GET_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
# The device tree's model names the board; either path may be the one present.
_MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
_OS_RELEASE_FILES = ("etc/os-release", "usr/lib/os-release")

# Bits of the get_throttled value: the low nibble is the state right now,
# the same bits shifted by 16 say whether it happened since boot.
_THROTTLED_FLAGS = (
    "under_voltage", "frequency_capped", "throttled", "soft_temperature_limit"
)
_OCCURRED_SHIFT = 16


def _attempt(name: str, func: Callable[[], _T]) -> _T | None:
    """Call C{func}, turning any exception into C{None}: one unreadable value
    (permissions, missing file, garbage, psutil error) must not cost the rest."""
    try:
        return func()
    except Exception as e:
        # Not log.failure: an expected absence is not worth a traceback.
        log.debug("Reading {reading} failed: {error!r}", reading=name, error=e)
        return None


def _read_text(path: str) -> str:
    """Read a small sysfs/procfs file as text; raises if it cannot."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def _first_existing(root: str, relatives: tuple[str, ...]) -> str | None:
    """The first of C{relatives} below C{root} that exists, or C{None}."""
    for relative in relatives:
        path = os.path.join(root, relative)
        if os.path.exists(path):
            return path
    return None


def _cpu_from_cpuinfo(text: str) -> str | None:
    """Name the CPU from /proc/cpuinfo text.  On a Pi C{Model} names the board,
    C{Hardware} the SoC and C{model name} only the core type; x86 has only the
    last, so take them in that order."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and value and key not in found:
            found[key] = value
    for key in ("Model", "Hardware", "model name"):
        if key in found:
            return found[key]
    return None


def _cpu_name(root: str) -> str | None:
    """The CPU name from cpuinfo, else whatever the platform module knows."""
    name = _attempt(
        "cpuinfo",
        lambda: _cpu_from_cpuinfo(_read_text(os.path.join(root, "proc/cpuinfo"))),
    )
    return name or platform.processor() or platform.machine() or None


def _board_model(root: str) -> str | None:
    """The device-tree model string (e.g. a Pi's board name), NUL stripped."""
    path = _first_existing(root, _MODEL_FILES)
    model = _read_text(path).replace("\x00", "").strip() if path else ""
    return model or None


def _pretty_os_name(root: str) -> str | None:
    """PRETTY_NAME from os-release, without its shell quoting."""
    path = _first_existing(root, _OS_RELEASE_FILES)
    for line in _read_text(path).splitlines() if path else ():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "PRETTY_NAME":
            return value.strip().strip("\"'") or None
    return None


def _os_description(root: str) -> str:
    """Kernel name and release, plus the distribution when it is known."""
    kernel = f"{platform.system()} {platform.release()}".strip()
    pretty = _attempt("os-release", lambda: _pretty_os_name(root))
    return f"{kernel} ({pretty})" if pretty else kernel


def _mhz(value: Any) -> float | None:
    """psutil reports an unknown frequency as 0.0; make that C{None}."""
    return float(value) if value else None


def computer_details(root: str = "/") -> dict:
    """Machine facts, gathered once at start: they do not change while the
    node runs, and the master describes itself with the same shape."""
    freq = _attempt("cpu_freq", lambda: psutil.cpu_freq())
    return {
        "hostname": _attempt("hostname", socket.gethostname),
        "model": _attempt("model", lambda: _board_model(root)),
        "ram": _attempt("ram", lambda: int(psutil.virtual_memory().total)),
        "swap": _attempt("swap", lambda: int(psutil.swap_memory().total)),
        "cpu": _attempt("cpu", lambda: _cpu_name(root)),
        "cpu_cores": _attempt("cpu_cores", psutil.cpu_count),
        "cpu_frequency_max": _mhz(freq.max) if freq else None,
        "cpu_frequency_min": _mhz(freq.min) if freq and freq.max else None,
        "architecture": _attempt("architecture", platform.machine) or None,
        "os": _attempt("os", lambda: _os_description(root)),
        "python": platform.python_version(),
        "picluster_version": __version__,
        "boot_time": _attempt("boot_time", lambda: float(psutil.boot_time())),
    }


def decode_throttled(value: int) -> dict:
    """Decode the Pi firmware's get_throttled bit field: bits 0-3 are the state
    now, bits 16-19 whether it happened since boot; C{raw} keeps newer bits."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a throttled bit field: {value!r}")
    decoded: dict[str, Any] = {"raw": value}
    for bit, name in enumerate(_THROTTLED_FLAGS):
        decoded[name] = bool(value & (1 << bit))
    for bit, name in enumerate(_THROTTLED_FLAGS):
        decoded[name + "_occurred"] = bool(value & (1 << (bit + _OCCURRED_SHIFT)))
    return decoded


def _parse_vcgencmd_throttled(output: bytes) -> int:
    """The bit field from C{vcgencmd get_throttled} output (C{throttled=0x50005})."""
    match = re.fullmatch(rb"\s*throttled=(0x[0-9a-fA-F]+)\s*", output)
    if match is None:
        raise ValueError(f"unexpected vcgencmd output: {output!r}")
    return int(match.group(1), 16)


def _pick_thermal_zone(root: str) -> str | None:
    """The temp file of the CPU's thermal zone: C{cpu-thermal} on a Pi,
    C{x86_pkg_temp} on Intel, else the lowest-numbered zone (usually the CPU)."""
    zones = glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone*"))
    zones = [z for z in zones if os.path.isfile(os.path.join(z, "temp"))]
    zones.sort(key=lambda z: int(re.sub(r"\D", "", os.path.basename(z)) or 0))
    for zone in zones:
        kind = _attempt("thermal type", lambda: _read_text(os.path.join(zone, "type")))
        kind = (kind or "").strip().lower()
        if kind == "cpu-thermal" or "cpu" in kind or "x86_pkg_temp" in kind:
            return os.path.join(zone, "temp")
    return os.path.join(zones[0], "temp") if zones else None


def _pick_volt_alarm(root: str) -> str | None:
    """The under-voltage alarm file of the Pi's C{rpi_volt} hwmon, if any."""
    for hwmon in sorted(glob.glob(os.path.join(root, "sys/class/hwmon/hwmon*"))):
        name = _attempt("hwmon name", lambda: _read_text(os.path.join(hwmon, "name")))
        alarm = os.path.join(hwmon, "in0_lcrit_alarm")
        if (name or "").strip() == "rpi_volt" and os.path.isfile(alarm):
            return alarm
    return None


class VitalsSampler:
    """Samples a node's changing vitals without blocking the reactor.  Paths
    that cannot change while running are found once, at construction, so each
    sample only reads a few small files."""

    def __init__(
        self,
        root: str = "/",
        reactor: Any = None,
        disk_path: str = "/",
        vcgencmd: str | Literal[False] | None = None,
        vcgencmd_timeout: float = 5.0,
    ) -> None:
        """C{vcgencmd} is run only when sysfs lacks get_throttled: C{None} looks it
        up on C{PATH}, C{False} never runs it; a hung one is abandoned after
        C{vcgencmd_timeout} seconds so a sample always completes."""
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._disk_path = disk_path
        self._thermal_file = _pick_thermal_zone(root)
        self._volt_alarm_file = _pick_volt_alarm(root)
        throttled = os.path.join(root, _GET_THROTTLED)
        self._throttled_file = throttled if os.path.isfile(throttled) else None
        if vcgencmd is None:
            vcgencmd = shutil.which("vcgencmd") or False
        self._vcgencmd = None if self._throttled_file else (vcgencmd or None)
        self._vcgencmd_timeout = vcgencmd_timeout
        self._process = _attempt("process", psutil.Process)
        # cpu_percent(interval=None) measures since its previous call: prime it.
        _attempt("cpu_percentage", lambda: psutil.cpu_percent(interval=None))

    def sample(self) -> Deferred[dict]:
        """A Deferred because C{vcgencmd} may have to run; it always fires with
        the vitals dict, never with a failure."""
        vitals = self._sync_vitals()
        if self._throttled_file is not None:
            d = succeed(_attempt("throttling", self._read_throttled_file))
        elif self._vcgencmd is not None:
            d = self._run_vcgencmd()
        else:
            d = succeed(None)
        return d.addCallback(self._finish, vitals)

    def _sync_vitals(self) -> dict:
        """Every reading that is a cheap local call or small file read."""
        freq = _attempt("cpu_freq", lambda: psutil.cpu_freq())
        memory = _attempt("virtual_memory", psutil.virtual_memory)
        swap = _attempt("swap_memory", psutil.swap_memory)
        disk = _attempt("disk_usage", lambda: psutil.disk_usage(self._disk_path))
        process = self._process
        return {
            "cpu_percentage": _attempt(
                "cpu_percentage", lambda: float(psutil.cpu_percent(interval=None))
            ),
            "cpu_frequency": _mhz(freq.current) if freq else None,
            "ram_free": int(memory.available) if memory else None,
            "swap_free": int(swap.free) if swap else None,
            "cpu_temperature": _attempt("cpu_temperature", self._read_temperature),
            "load_average": _attempt(
                "load_average", lambda: [float(x) for x in os.getloadavg()]
            ),
            "disk_free": int(disk.free) if disk else None,
            "disk_total": int(disk.total) if disk else None,
            "uptime": _attempt(
                "uptime", lambda: float(wall_time(self._reactor) - psutil.boot_time())
            ),
            # None, not an error, where psutil could not describe this process.
            "process_rss": _attempt(
                "process_rss", lambda: int(process.memory_info().rss)
            ) if process is not None else None,
        }

    def _read_temperature(self) -> float | None:
        """CPU temperature in °C; the kernel reports millidegrees."""
        if self._thermal_file is None:
            return None
        return int(_read_text(self._thermal_file).strip()) / 1000.0

    def _read_throttled_file(self) -> dict:
        """Decode the firmware's sysfs get_throttled (hex, 0x optional)."""
        assert self._throttled_file is not None  # read only where there is one (sample)
        return decode_throttled(int(_read_text(self._throttled_file).strip(), 16))

    def _run_vcgencmd(self) -> Deferred:
        """Run C{vcgencmd get_throttled}, firing with the decoded dict or C{None}.
        getProcessOutputAndValue, not getProcessOutput, so the exit code counts."""

        def decode(result: tuple) -> dict:
            out, err, code = result
            if code != 0:
                raise RuntimeError(f"vcgencmd exited {code}: {err!r}")
            return decode_throttled(_parse_vcgencmd_throttled(out))

        def failed(failure: Any) -> None:
            log.debug("vcgencmd failed: {reason}", reason=failure.getErrorMessage())

        # maybeDeferred: spawnProcess raises at once if it cannot even start.
        d = maybeDeferred(
            getProcessOutputAndValue,
            self._vcgencmd,
            ("get_throttled",),
            env=os.environ,
            reactor=self._reactor,
        )
        d.addTimeout(self._vcgencmd_timeout, self._reactor)
        return d.addCallback(decode).addErrback(failed)

    def _finish(self, throttling: dict | None, vitals: dict) -> dict:
        """Add throttling and the under-voltage flag it implies."""
        vitals["throttling"] = throttling
        if throttling is not None:
            vitals["under_voltage"] = throttling["under_voltage"]
        else:
            vitals["under_voltage"] = _attempt("under_voltage", self._read_volt_alarm)
        return vitals

    def _read_volt_alarm(self) -> bool | None:
        """The rpi_volt hwmon's under-voltage alarm, when no throttled value."""
        if self._volt_alarm_file is None:
            return None
        return int(_read_text(self._volt_alarm_file).strip()) == 1
