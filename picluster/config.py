"""
Settings from the command line and from C{--config} files.

Each option is declared once as a L{Setting}: its name, how to read its text
and its default.  L{resolve} then takes the command line, falls back to the
INI file (which also accepts the tutorial's C{rpicluster.cfg} as it is), then
to the default, and turns any bad value into a L{usage.UsageError} that names
the option and what is wrong with it.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import endpoints
from twisted.python import usage

from picluster.trust.token import ROLE_OF, SLAVE, JoinToken, TokenError, parse_token, read_token_file

#: Where a master serves its dashboard unless told: this machine only, as
#: the API has no login yet.
DEFAULT_WEB = "tcp:8080:interface=127.0.0.1"

#: A port on loopback that the system picks.
LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


@dataclass(frozen=True)
class Setting:
    """One option: C{--name} on the command line, C{name} in the file."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    #: A switch: C{--name} on the command line, C{name = yes} in the file.
    flag: bool = False

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    def as_parameter(self) -> list[Any]:
        """The C{optParameters} row; the default is applied by L{resolve}."""
        default = "" if self.default is None else f" [default: {self.default}]"
        return [self.name, None, None, self.help + default]

    def as_flag(self) -> list[Any]:
        """The C{optFlags} row of a switch."""
        return [self.name, None, self.help]


def parameters(settings: list[Setting]) -> list[list[Any]]:
    """The C{optParameters} of the settings that take a value."""
    return [setting.as_parameter() for setting in settings if not setting.flag]


def flags(settings: list[Setting]) -> list[list[Any]]:
    """The C{optFlags} of the settings that are switches."""
    return [setting.as_flag() for setting in settings if setting.flag]


_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")


def boolean(text: str) -> bool:
    """A switch's value in a config file."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected yes or no, not {text!r}")


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """A parser of whole numbers from C{low} to C{high}."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}, not {value}")
        return value

    return parse


def directory(text: str) -> str:
    """A directory's path; whether it can be made and written is checked as it is used."""
    if not text.strip():
        raise ValueError("must name a directory")
    return text


def optional_text(text: str) -> str | None:
    """Any text; empty is unset."""
    return text.strip() or None


def word_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of words; empty items are dropped."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def positive_number(unit: str) -> Callable[[str], float]:
    """A parser of positive, finite numbers of C{unit} (seconds, days, ...)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number of {unit}, not {text!r}") from None
        if not 0 < value < float("inf"):
            raise ValueError(f"must be a positive number of {unit}, not {text!r}")
        return value

    return parse


seconds = positive_number("seconds")


_SIZE = re.compile(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

#: Bounds of C{--max-frame}: room for a handshake, and what 4 bytes can say.
SMALLEST_MAX_FRAME = 1024
LARGEST_MAX_FRAME = 2**32 - 1


def byte_size(text: str) -> int:
    """A number of bytes: C{1048576}, C{512K}, C{2M}, C{1 GiB} (powers of 1024)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"expected a size in bytes such as 1048576 or 1M, not {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def frame_size(text: str) -> int:
    value = byte_size(text)
    if not SMALLEST_MAX_FRAME <= value <= LARGEST_MAX_FRAME:
        raise ValueError(
            f"must be between {SMALLEST_MAX_FRAME} and {LARGEST_MAX_FRAME} bytes, not {value}"
        )
    return value


def read_section(path: str, section: str) -> dict[str, str]:
    """
    Read one section of an INI file; a missing section reads as empty.

    @raise usage.UsageError: when the file cannot be read or parsed.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as config_file:
            parser.read_file(config_file)
    except OSError as e:
        raise usage.UsageError(f"--config: cannot read {path}: {e.strerror or e}") from None
    except (configparser.Error, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--config: {path} is not a valid INI file: {e}") from None
    if not parser.has_section(section):
        return {}
    return {key.replace("-", "_"): value.strip() for key, value in parser.items(section)}


def resolve(
    options: usage.Options,
    section: str,
    settings: list[Setting],
    from_file: dict[str, str],
    file_key_names: dict[str, str] | None = None,
) -> None:
    """
    Fill C{options} with every setting's value: command line, file, default.

    @param from_file: The file's section, already translated from the
        tutorial's keys; keys that match no setting are refused.
    @param file_key_names: For translated keys, the names the file used, so
        that an error names what the user wrote.
    @raise usage.UsageError: naming the option or key and what is wrong.
    """
    known = {setting.key for setting in settings}
    unknown = sorted(set(from_file) - known)
    if unknown:
        raise usage.UsageError(
            f"--config {options['config']}: unknown key {unknown[0]!r} in [{section}]"
            f" (known: {', '.join(sorted(known))})"
        )
    for setting in settings:
        text = options.get(setting.name)
        if setting.flag:
            # usage stores a switch as 0 or 1; only "given" beats the file.
            text = "yes" if text else None
        where = f"--{setting.name}"
        if text is None and setting.key in from_file:
            text = from_file[setting.key]
            written = (file_key_names or {}).get(setting.key, setting.key)
            where = f"{written} in [{section}] of {options['config']}"
        if text is None:
            options[setting.name] = setting.default
            continue
        try:
            options[setting.name] = setting.parse(text)
        except ValueError as e:
            raise usage.UsageError(f"{where}: {e}") from None


class Options(usage.Options):
    """
    Options shared by the master and the slave.

    Subclasses list their L{Setting}s in C{settings} (and, for usage's sake,
    as C{optParameters}) and their section of the config file in C{section};
    C{translate_legacy} maps the tutorial's keys.
    """

    section = ""
    settings: list[Setting] = []

    optParameters = [["config", "c", None, "Read settings from this INI file"]]

    def translate_legacy(self, from_file: dict[str, str]) -> dict[str, str]:
        """
        Map the tutorial's keys onto settings, noting in C{file_key_names}
        which keys a translated setting came from.
        """
        return from_file

    def postOptions(self) -> None:
        from_file: dict[str, str] = {}
        self.file_key_names: dict[str, str] = {}
        if self["config"] is not None:
            from_file = self.translate_legacy(read_section(self["config"], self.section))
        resolve(self, self.section, self.settings, from_file, self.file_key_names)
        self.check()

    def check(self) -> None:
        """Checks across options, once each has its value."""
        if self["dead-after"] is None:
            self["dead-after"] = 3 * self["keepalive"]
        if self["dead-after"] <= self["keepalive"]:
            raise usage.UsageError(
                f"--dead-after ({self['dead-after']:g} s) must be longer than"
                f" --keepalive ({self['keepalive']:g} s), or live peers would be dropped"
            )


#: Settings every picluster node has.
COMMON_SETTINGS = [
    Setting("keepalive", seconds, 5.0, "Seconds between keepalive pings"),
    Setting(
        "dead-after", seconds, None,
        "Close a connection silent for this many seconds (3 x keepalive when unset)",
    ),
    Setting("max-frame", frame_size, 1024 * 1024, "Largest frame accepted, in bytes (K and M allowed)"),
]


def server_endpoint(text: str) -> str:
    """Check a server endpoint description without listening on it."""
    from twisted.internet import reactor

    try:
        endpoint = endpoints.serverFromString(reactor, text)
    except (IndexError, KeyError) as e:
        if text.strip().lower().startswith("systemd:"):
            # Twisted looks the socket up as it parses: none was handed over.
            raise ValueError(
                f"no socket for {text!r} was handed over by systemd: start the master"
                " through picluster-master.socket"
            ) from None
        raise ValueError(f"not a usable server endpoint ({text!r}): {e}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a usable server endpoint ({text!r}): {e}") from None
    # serverFromString leaves the range of a TCP port to bind() to find out.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"not a usable server endpoint ({text!r}): port must be between 0 and 65535")
    return text


def join_token(text: str | None, file: str | None, insecure: bool, *,
               credential: str) -> JoinToken | None:
    """
    The token of C{--token} or C{--token-file}, or C{None} with C{--insecure}.

    @raise usage.UsageError: none given, both given, or one that cannot be used.
    """
    if insecure:
        if text or file:
            raise usage.UsageError("--insecure joins without a token: drop --token/--token-file")
        return None
    if text and file:
        raise usage.UsageError("give --token or --token-file, not both")
    if not text and not file:
        raise usage.UsageError(
            "a token is needed to join: --token-file FILE or --token TOKEN, as"
            f" 'picluster token{'' if credential == SLAVE else ' --client'}' prints it on the"
            " master (or --insecure for a master run with --insecure)"
        )
    try:
        token = read_token_file(file) if file else parse_token(text or "")
    except TokenError as e:
        raise usage.UsageError(f"bad join token: {e}") from None
    if token.role != ROLE_OF[credential]:
        raise usage.UsageError(
            f"this is a {token.credential} token; a {credential} needs the one"
            f" 'picluster token{'' if credential == SLAVE else ' --client'}' prints"
        )
    return token
