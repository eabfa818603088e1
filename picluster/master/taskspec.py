"""
What a client may ask the cluster to run, checked before anything is stored.

A submission is refused as a whole (L{wire.BadMessage}, naming the spec by
its index) when any of its specs is malformed: nothing half-submitted is
left behind.  L{Requirements} also decides which slaves may run a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from picluster import wire

#: Runs a task gets after its first, when slaves are lost under it.
DEFAULT_RETRIES = 3

#: The most retries anyone may ask for.
MAX_RETRIES = 100

#: Largest JSON encoding of one task's arguments, in bytes.
DEFAULT_MAX_ARGS = 64 * 1024

#: Longest idempotency key and task name, in characters.
MAX_KEY_LENGTH = 200
MAX_NAME_LENGTH = 200

#: Specs in one C{submit} message.
MAX_SPECS_PER_SUBMIT = 10_000

REQUIREMENT_NAMES = ("min_ram", "min_cores", "tags", "hostname")

SPEC_FIELDS = frozenset({"name", "args", "requirements", "timeout", "retries", "key"})


def _is_int(value: Any) -> bool:
    return type(value) is int


@dataclass(frozen=True)
class Requirements:
    """What a slave must have to be given a task."""

    min_ram: int = 0
    min_cores: int = 0
    tags: tuple[str, ...] = ()
    hostname: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> Requirements:
        """@raise ValueError: naming the requirement that is wrong."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError("requirements must be a JSON object")
        unknown = sorted(set(raw) - set(REQUIREMENT_NAMES))
        if unknown:
            raise ValueError(
                f"unknown requirement {unknown[0]!r} (known: {', '.join(REQUIREMENT_NAMES)})"
            )
        for name in ("min_ram", "min_cores"):
            value = raw.get(name, 0)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
        tags = raw.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise ValueError("tags must be a list of non-empty strings")
        hostname = raw.get("hostname")
        if hostname is not None and (not isinstance(hostname, str) or not hostname):
            raise ValueError("hostname must be a non-empty string")
        return cls(raw.get("min_ram", 0), raw.get("min_cores", 0), tuple(sorted(set(tags))), hostname)

    def as_json(self) -> dict[str, Any]:
        """The requirements as stored and shown: only the ones set."""
        shown: dict[str, Any] = {}
        if self.min_ram:
            shown["min_ram"] = self.min_ram
        if self.min_cores:
            shown["min_cores"] = self.min_cores
        if self.tags:
            shown["tags"] = list(self.tags)
        if self.hostname is not None:
            shown["hostname"] = self.hostname
        return shown

    def unmet(self, computer_details: dict[str, Any] | None, tags: frozenset[str]) -> str | None:
        """
        Why a slave with these facts and tags may not run the task, or
        C{None} when it may.  A fact the slave could not read counts as unmet.
        """
        facts = computer_details or {}
        if self.min_ram:
            ram = facts.get("ram")
            if not _is_int(ram) or ram < self.min_ram:
                return f"min_ram={self.min_ram}"
        if self.min_cores:
            cores = facts.get("cpu_cores")
            if not _is_int(cores) or cores < self.min_cores:
                return f"min_cores={self.min_cores}"
        if self.tags and not tags.issuperset(self.tags):
            return f"tags={','.join(self.tags)}"
        if self.hostname is not None and facts.get("hostname") != self.hostname:
            return f"hostname={self.hostname}"
        return None


@dataclass(frozen=True)
class TaskSpec:
    """One task as submitted, checked."""

    name: str
    args: dict[str, Any]
    requirements: Requirements
    timeout: float | None
    retries: int
    key: str | None
    #: The arguments' JSON, as stored and sent.
    args_json: str

    @classmethod
    def parse(cls, raw: Any, max_args: int = DEFAULT_MAX_ARGS) -> TaskSpec:
        """@raise ValueError: saying what is wrong with the spec."""
        if not isinstance(raw, dict):
            raise ValueError("a task spec must be a JSON object")
        unknown = sorted(set(raw) - SPEC_FIELDS)
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(SPEC_FIELDS))})")
        name = raw.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"name must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
        args = raw.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ValueError("args must be a JSON object")
        args_json = wire.encode(args).decode("ascii")
        if len(args_json) > max_args:
            raise ValueError(f"args of {len(args_json)} bytes exceed the {max_args} byte limit")
        timeout = raw.get("timeout")
        if timeout is not None:
            if type(timeout) not in (int, float) or not 0 < timeout <= 365 * 86400:
                raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
            timeout = float(timeout)
        retries = raw.get("retries", DEFAULT_RETRIES)
        if not _is_int(retries) or not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}, not {retries!r}")
        key = raw.get("key")
        if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH):
            raise ValueError(f"key must be a non-empty string of at most {MAX_KEY_LENGTH} characters")
        requirements = Requirements.parse(raw.get("requirements"))
        return cls(name, args, requirements, timeout, retries, key, args_json)


def parse_submission(payload: Any, max_args: int = DEFAULT_MAX_ARGS) -> list[TaskSpec]:
    """
    The specs of a C{submit} payload, all checked.

    @raise wire.BadMessage: for the first bad spec, with its C{index}.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("tasks"), list):
        raise wire.BadMessage('submit payload must be {"tasks": [spec, ...]}')
    raw_specs = payload["tasks"]
    if not raw_specs:
        raise wire.BadMessage("submit holds no tasks")
    if len(raw_specs) > MAX_SPECS_PER_SUBMIT:
        raise wire.BadMessage(
            f"submit holds {len(raw_specs)} tasks; at most {MAX_SPECS_PER_SUBMIT} per message"
        )
    specs = []
    keys: set[str] = set()
    for index, raw in enumerate(raw_specs):
        try:
            spec = TaskSpec.parse(raw, max_args)
        except ValueError as e:
            raise wire.BadMessage(f"task {index}: {e}", index=index) from None
        if spec.key is not None:
            if spec.key in keys:
                raise wire.BadMessage(f"task {index}: key {spec.key!r} appears twice", index=index)
            keys.add(spec.key)
        specs.append(spec)
    return specs
