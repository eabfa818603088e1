"""Tests for picluster.sysinfo."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections import namedtuple

import psutil
from twisted.internet.task import Clock
from twisted.trial import unittest

from picluster import sysinfo
from picluster._version import __version__
from picluster.sysinfo import VitalsSampler, computer_details, decode_throttled

THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"

PI_CPUINFO = """\
processor\t: 0
model name\t: ARMv7 Processor rev 3 (v7l)
BogoMIPS\t: 108.00

Hardware\t: BCM2711
Revision\t: c03114
Serial\t\t: 10000000abcdef01
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 158
model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz

processor\t: 1
model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz
"""

COMPUTER_TYPES = {
    "hostname": str,
    "model": (str, type(None)),
    "ram": int,
    "swap": int,
    "cpu": str,
    "cpu_cores": int,
    "cpu_frequency_max": (float, type(None)),
    "cpu_frequency_min": (float, type(None)),
    "architecture": str,
    "os": str,
    "python": str,
    "picluster_version": str,
    "boot_time": float,
}

VITALS_TYPES = {
    "cpu_percentage": float,
    "cpu_frequency": (float, type(None)),
    "ram_free": int,
    "swap_free": int,
    "cpu_temperature": (float, type(None)),
    "throttling": (dict, type(None)),
    "under_voltage": (bool, type(None)),
    "load_average": list,
    "disk_free": int,
    "disk_total": int,
    "uptime": float,
    "process_rss": int,
}


def temp_dir(case: unittest.TestCase) -> str:
    """A new directory from mktemp(), removed after the test: under pytest
    mktemp() is relative to the checkout rather than _trial_temp."""
    path = case.mktemp()  # <module>/<class>/<test>/<random>/temp, relative
    os.makedirs(path)
    case.addCleanup(remove_temp_dir, path)
    return os.path.abspath(path)


def remove_temp_dir(path: str) -> None:
    """Delete a temp_dir() and whichever of its parents are left empty."""
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    try:
        os.removedirs(os.path.dirname(os.path.dirname(path)))
    except OSError:
        pass


def make_tree(case: unittest.TestCase, files: dict) -> str:
    """Build a fake root in a fresh temp dir from {relative path: content}."""
    root = temp_dir(case)
    for relative, content in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(path, mode) as f:
            f.write(content)
    return root


def make_script(case: unittest.TestCase, body: str, name: str = "vcgencmd") -> str:
    """Write an executable shell script standing in for vcgencmd."""
    path = os.path.join(temp_dir(case), name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def sample_now(case: unittest.TestCase, root: str, **kwargs) -> dict:
    """Sample a fake tree with vcgencmd disabled; the Deferred fires at once."""
    kwargs.setdefault("vcgencmd", False)
    return case.successResultOf(VitalsSampler(root, **kwargs).sample())


class CpuNameTests(unittest.TestCase):
    """The cpu fact read from /proc/cpuinfo."""

    def test_piModelLineWins(self) -> None:
        """On a Pi the Model line beats Hardware and model name."""
        root = make_tree(self, {"proc/cpuinfo": PI_CPUINFO})
        self.assertEqual(computer_details(root)["cpu"], "Raspberry Pi 4 Model B Rev 1.4")

    def test_hardwareBeatsModelName(self) -> None:
        """Without a Model line, Hardware beats model name."""
        text = PI_CPUINFO.replace("Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n", "")
        root = make_tree(self, {"proc/cpuinfo": text})
        self.assertEqual(computer_details(root)["cpu"], "BCM2711")

    def test_x86ModelName(self) -> None:
        """x86 cpuinfo gives the model name, not the numeric model field."""
        root = make_tree(self, {"proc/cpuinfo": X86_CPUINFO})
        self.assertEqual(
            computer_details(root)["cpu"], "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz"
        )

    def test_noCpuinfoFallsBackToPlatform(self) -> None:
        """Without cpuinfo the cpu is platform.processor(), else machine()."""
        root = make_tree(self, {})
        self.patch(sysinfo.platform, "processor", lambda: "")
        self.patch(sysinfo.platform, "machine", lambda: "aarch64")
        self.assertEqual(computer_details(root)["cpu"], "aarch64")
        self.patch(sysinfo.platform, "processor", lambda: "x86_64")
        self.assertEqual(computer_details(root)["cpu"], "x86_64")


class ComputerDetailsTests(unittest.TestCase):
    """The other machine facts."""

    def test_deviceTreeModelNulStripped(self) -> None:
        """The device-tree model loses its trailing NUL."""
        model = b"Raspberry Pi 5 Model B Rev 1.0\x00"
        root = make_tree(self, {"proc/device-tree/model": model})
        self.assertEqual(computer_details(root)["model"], "Raspberry Pi 5 Model B Rev 1.0")

    def test_firmwareDeviceTreeModel(self) -> None:
        """The model is also found under /sys/firmware/devicetree/base."""
        root = make_tree(
            self, {"sys/firmware/devicetree/base/model": b"Raspberry Pi 3 Model B+\x00"}
        )
        self.assertEqual(computer_details(root)["model"], "Raspberry Pi 3 Model B+")

    def test_noModel(self) -> None:
        """Without a device tree the model is null."""
        self.assertIsNone(computer_details(make_tree(self, {}))["model"])

    def test_modelIsDirectory(self) -> None:
        """An unreadable model file gives null rather than an exception."""
        root = make_tree(self, {"proc/device-tree/model/x": ""})
        self.assertIsNone(computer_details(root)["model"])

    def test_osPrettyName(self) -> None:
        """The os fact adds os-release's PRETTY_NAME to the kernel."""
        root = make_tree(
            self,
            {
                "etc/os-release": 'NAME="Debian GNU/Linux"\n'
                'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
            },
        )
        self.patch(sysinfo.platform, "system", lambda: "Linux")
        self.patch(sysinfo.platform, "release", lambda: "6.1.0")
        self.assertEqual(
            computer_details(root)["os"], "Linux 6.1.0 (Debian GNU/Linux 12 (bookworm))"
        )

    def test_osWithoutRelease(self) -> None:
        """Without os-release the os fact is just the kernel."""
        self.patch(sysinfo.platform, "system", lambda: "Linux")
        self.patch(sysinfo.platform, "release", lambda: "6.1.0")
        self.assertEqual(computer_details(make_tree(self, {}))["os"], "Linux 6.1.0")

    def test_frequencyUnknown(self) -> None:
        """psutil's None or 0.0 max frequency gives null frequencies."""
        freq = namedtuple("scpufreq", "current min max")
        self.patch(sysinfo.psutil, "cpu_freq", lambda: freq(2596.1, 0.0, 0.0))
        details = computer_details(make_tree(self, {}))
        self.assertIsNone(details["cpu_frequency_max"])
        self.assertIsNone(details["cpu_frequency_min"])
        self.patch(sysinfo.psutil, "cpu_freq", lambda: None)
        self.assertIsNone(computer_details(make_tree(self, {}))["cpu_frequency_max"])

    def test_frequencyKnown(self) -> None:
        """Known frequency limits are reported as MHz floats."""
        freq = namedtuple("scpufreq", "current min max")
        self.patch(sysinfo.psutil, "cpu_freq", lambda: freq(1500, 600, 1800))
        details = computer_details(make_tree(self, {}))
        self.assertEqual(details["cpu_frequency_min"], 600.0)
        self.assertEqual(details["cpu_frequency_max"], 1800.0)

    def test_psutilFailure(self) -> None:
        """A failing psutil call gives null for its fact only."""

        def broken():
            raise psutil.AccessDenied()

        self.patch(sysinfo.psutil, "virtual_memory", broken)
        details = computer_details(make_tree(self, {}))
        self.assertIsNone(details["ram"])
        self.assertIsInstance(details["swap"], int)

    def test_realMachine(self) -> None:
        """On this machine every fact has its JSON type and json.dumps works."""
        details = computer_details()
        self.assertEqual(set(details), set(COMPUTER_TYPES))
        for key, kind in COMPUTER_TYPES.items():
            self.assertIsInstance(details[key], kind, key)
        self.assertEqual(details["picluster_version"], __version__)
        self.assertEqual(json.loads(json.dumps(details)), details)


class TemperatureTests(unittest.TestCase):
    """cpu_temperature from the thermal zones."""

    def test_prefersCpuThermalZone(self) -> None:
        """The cpu-thermal zone wins over zone0; millidegrees become °C."""
        root = make_tree(
            self,
            {
                "sys/class/thermal/thermal_zone0/type": "acpitz\n",
                "sys/class/thermal/thermal_zone0/temp": "30000\n",
                "sys/class/thermal/thermal_zone1/type": "cpu-thermal\n",
                "sys/class/thermal/thermal_zone1/temp": "48312\n",
            },
        )
        self.assertEqual(sample_now(self, root)["cpu_temperature"], 48.312)

    def test_prefersX86PackageZone(self) -> None:
        """The x86_pkg_temp zone wins over other zones."""
        root = make_tree(
            self,
            {
                "sys/class/thermal/thermal_zone0/type": "acpitz\n",
                "sys/class/thermal/thermal_zone0/temp": "27800\n",
                "sys/class/thermal/thermal_zone3/type": "x86_pkg_temp\n",
                "sys/class/thermal/thermal_zone3/temp": "61000\n",
            },
        )
        self.assertEqual(sample_now(self, root)["cpu_temperature"], 61.0)

    def test_fallsBackToZoneZero(self) -> None:
        """With no CPU-typed zone the lowest-numbered zone (numerically) is read."""
        root = make_tree(
            self,
            {
                "sys/class/thermal/thermal_zone10/type": "acpitz\n",
                "sys/class/thermal/thermal_zone10/temp": "10000\n",
                "sys/class/thermal/thermal_zone2/type": "acpitz\n",
                "sys/class/thermal/thermal_zone2/temp": "20000\n",
                "sys/class/thermal/thermal_zone0/temp": "45000\n",
            },
        )
        self.assertEqual(sample_now(self, root)["cpu_temperature"], 45.0)

    def test_noThermalZone(self) -> None:
        """Without thermal zones the temperature is null."""
        self.assertIsNone(sample_now(self, make_tree(self, {}))["cpu_temperature"])

    def test_garbageTemperature(self) -> None:
        """A garbage temp file gives null, not an exception."""
        root = make_tree(self, {"sys/class/thermal/thermal_zone0/temp": "hot!\n"})
        self.assertIsNone(sample_now(self, root)["cpu_temperature"])


class DecodeThrottledTests(unittest.TestCase):
    """decode_throttled's reading of the firmware bit field."""

    def test_zero(self) -> None:
        """0x0 decodes to every flag false."""
        decoded = decode_throttled(0x0)
        self.assertEqual(decoded.pop("raw"), 0)
        self.assertEqual(len(decoded), 8)
        self.assertFalse(any(decoded.values()))

    def test_underVoltageAndThrottled(self) -> None:
        """0x50005 is under-voltage and throttled now and since boot."""
        decoded = decode_throttled(0x50005)
        self.assertEqual(decoded["raw"], 0x50005)
        self.assertTrue(decoded["under_voltage"])
        self.assertTrue(decoded["throttled"])
        self.assertFalse(decoded["frequency_capped"])
        self.assertFalse(decoded["soft_temperature_limit"])
        self.assertTrue(decoded["under_voltage_occurred"])
        self.assertTrue(decoded["throttled_occurred"])
        self.assertFalse(decoded["frequency_capped_occurred"])
        self.assertFalse(decoded["soft_temperature_limit_occurred"])

    def test_softTemperatureLimit(self) -> None:
        """0x80008 is only the soft temperature limit, now and since boot."""
        decoded = decode_throttled(0x80008)
        self.assertTrue(decoded["soft_temperature_limit"])
        self.assertTrue(decoded["soft_temperature_limit_occurred"])
        others = {k: v for k, v in decoded.items() if "soft" not in k and k != "raw"}
        self.assertFalse(any(others.values()), others)

    def test_rejectsNonBitField(self) -> None:
        """Negative numbers and non-ints are refused."""
        self.assertRaises(ValueError, decode_throttled, -1)
        self.assertRaises(ValueError, decode_throttled, "0x5")


class ThrottlingTests(unittest.TestCase):
    """throttling and under_voltage in a sample."""

    def test_sysfsGetThrottled(self) -> None:
        """The sysfs get_throttled hex value is decoded into the sample."""
        root = make_tree(self, {THROTTLED: "50005\n"})
        vitals = sample_now(self, root)
        self.assertEqual(vitals["throttling"], decode_throttled(0x50005))
        self.assertIs(vitals["under_voltage"], True)

    def test_sysfsBeatsVcgencmd(self) -> None:
        """When sysfs has get_throttled, vcgencmd is never run."""
        script = make_script(self, "echo throttled=0x50005")
        root = make_tree(self, {THROTTLED: "0x0\n"})
        vitals = sample_now(self, root, vcgencmd=script)
        self.assertEqual(vitals["throttling"]["raw"], 0)
        self.assertIs(vitals["under_voltage"], False)

    def test_garbageSysfs(self) -> None:
        """A garbage get_throttled file gives null throttling."""
        root = make_tree(self, {THROTTLED: "not hex\n"})
        self.assertIsNone(sample_now(self, root)["throttling"])

    def test_hwmonUnderVoltage(self) -> None:
        """Without throttling, an rpi_volt hwmon alarm of 1 means under-voltage."""
        root = make_tree(
            self,
            {
                "sys/class/hwmon/hwmon0/name": "cpu_thermal\n",
                "sys/class/hwmon/hwmon0/in0_lcrit_alarm": "1\n",
                "sys/class/hwmon/hwmon1/name": "rpi_volt\n",
                "sys/class/hwmon/hwmon1/in0_lcrit_alarm": "1\n",
            },
        )
        vitals = sample_now(self, root)
        self.assertIsNone(vitals["throttling"])
        self.assertIs(vitals["under_voltage"], True)

    def test_hwmonNoUnderVoltage(self) -> None:
        """An rpi_volt alarm of 0 means no under-voltage."""
        root = make_tree(
            self,
            {
                "sys/class/hwmon/hwmon0/name": "rpi_volt\n",
                "sys/class/hwmon/hwmon0/in0_lcrit_alarm": "0\n",
            },
        )
        self.assertIs(sample_now(self, root)["under_voltage"], False)

    def test_otherHwmonIgnored(self) -> None:
        """A hwmon not named rpi_volt says nothing about under-voltage."""
        root = make_tree(
            self,
            {
                "sys/class/hwmon/hwmon0/name": "cpu_thermal\n",
                "sys/class/hwmon/hwmon0/in0_lcrit_alarm": "1\n",
            },
        )
        self.assertIsNone(sample_now(self, root)["under_voltage"])

    def test_nothingExposed(self) -> None:
        """No sysfs, no hwmon and no vcgencmd give null throttling and under_voltage."""
        vitals = sample_now(self, make_tree(self, {}))
        self.assertIsNone(vitals["throttling"])
        self.assertIsNone(vitals["under_voltage"])

    def test_vcgencmd(self) -> None:
        """Without sysfs, vcgencmd get_throttled output is decoded."""
        script = make_script(self, 'test "$1" = get_throttled && echo throttled=0x50000')
        d = VitalsSampler(make_tree(self, {}), vcgencmd=script).sample()

        def check(vitals: dict) -> None:
            self.assertEqual(vitals["throttling"], decode_throttled(0x50000))
            self.assertIs(vitals["under_voltage"], False)

        return d.addCallback(check)

    def test_vcgencmdFoundOnPath(self) -> None:
        """vcgencmd=None finds vcgencmd on PATH."""
        script = make_script(self, "echo throttled=0x50005")
        self.addCleanup(os.environ.__setitem__, "PATH", os.environ.get("PATH", ""))
        os.environ["PATH"] = os.path.dirname(script)
        d = VitalsSampler(make_tree(self, {})).sample()
        return d.addCallback(
            lambda vitals: self.assertEqual(vitals["throttling"]["raw"], 0x50005)
        )

    def test_vcgencmdFails(self) -> None:
        """A vcgencmd that exits non-zero gives null throttling."""
        script = make_script(self, "echo throttled=0x50005; exit 1")
        d = VitalsSampler(make_tree(self, {}), vcgencmd=script).sample()
        return d.addCallback(lambda vitals: self.assertIsNone(vitals["throttling"]))

    def test_vcgencmdGarbage(self) -> None:
        """Unexpected vcgencmd output gives null throttling."""
        script = make_script(self, "echo 'VCHI initialization failed'")
        d = VitalsSampler(make_tree(self, {}), vcgencmd=script).sample()
        return d.addCallback(lambda vitals: self.assertIsNone(vitals["throttling"]))

    def test_vcgencmdMissing(self) -> None:
        """A vcgencmd path that cannot be run gives null throttling."""
        missing = os.path.join(temp_dir(self), "vcgencmd")
        d = VitalsSampler(make_tree(self, {}), vcgencmd=missing).sample()
        return d.addCallback(lambda vitals: self.assertIsNone(vitals["throttling"]))

    def test_vcgencmdTimeout(self) -> None:
        """A vcgencmd that never finishes gives null throttling after the timeout."""

        class HungProcessReactor(Clock):
            def spawnProcess(self, *args, **kwargs):
                self.spawned = args

        reactor = HungProcessReactor()
        sampler = VitalsSampler(
            make_tree(self, {}), reactor=reactor, vcgencmd="/x/vcgencmd", vcgencmd_timeout=5
        )
        d = sampler.sample()
        self.assertNoResult(d)
        self.assertEqual(reactor.spawned[2], ("/x/vcgencmd", "get_throttled"))
        reactor.advance(5)
        self.assertIsNone(self.successResultOf(d)["throttling"])


class VitalsTests(unittest.TestCase):
    """The rest of a sample."""

    def test_uptimeFromReactorClock(self) -> None:
        """uptime is the reactor's time minus psutil's boot time."""
        self.patch(sysinfo.psutil, "boot_time", lambda: 1000.0)
        clock = Clock()
        clock.advance(1234.5)
        vitals = sample_now(self, make_tree(self, {}), reactor=clock)
        self.assertEqual(vitals["uptime"], 234.5)

    def test_failingReadingsAreNull(self) -> None:
        """Failing psutil and os calls null their keys without failing sample()."""

        def broken(*args, **kwargs):
            raise PermissionError("denied")

        broken_calls = ("virtual_memory", "disk_usage", "cpu_percent", "boot_time", "cpu_freq")
        for name in broken_calls:
            self.patch(sysinfo.psutil, name, broken)
        self.patch(sysinfo.os, "getloadavg", broken)
        vitals = sample_now(self, make_tree(self, {}))
        for key in ("ram_free", "disk_free", "disk_total", "cpu_percentage", "uptime",
                    "cpu_frequency", "load_average"):
            self.assertIsNone(vitals[key], key)
        self.assertIsInstance(vitals["swap_free"], int)

    def test_diskPath(self) -> None:
        """disk_free and disk_total describe disk_path."""
        usage = namedtuple("sdiskusage", "total used free percent")
        seen = []

        def fake(path: str):
            seen.append(path)
            return usage(100, 60, 40, 60.0)

        self.patch(sysinfo.psutil, "disk_usage", fake)
        vitals = sample_now(self, make_tree(self, {}), disk_path="/srv/data")
        self.assertEqual(seen, ["/srv/data"])
        self.assertEqual((vitals["disk_free"], vitals["disk_total"]), (40, 100))

    def test_realMachine(self) -> None:
        """On this machine every vital has its JSON type and json.dumps works."""
        d = VitalsSampler().sample()

        def check(vitals: dict) -> None:
            self.assertEqual(set(vitals), set(VITALS_TYPES))
            for key, kind in VITALS_TYPES.items():
                self.assertIsInstance(vitals[key], kind, key)
            self.assertEqual(len(vitals["load_average"]), 3)
            self.assertTrue(all(isinstance(x, float) for x in vitals["load_average"]))
            self.assertGreater(vitals["uptime"], 0)
            self.assertEqual(json.loads(json.dumps(vitals)), vitals)

        return d.addCallback(check)
