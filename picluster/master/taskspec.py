"""
What a client may ask the cluster to run, checked before anything is stored.

The shape of a spec (types, lengths, ranges) is declared on the wire
(L{messages.TaskSpec}) and checked by the decoder; what is left is checked
here: the arguments' size as JSON, and keys repeated within a submission.  A
submission is refused as a whole (L{wire.BadMessage}, naming the spec by its
index) when any of its specs is wrong: nothing half-submitted is left
behind.  L{Requirements} also decides which slaves may run a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from picluster import wire
from picluster.wire import messages

#: Largest JSON encoding of one task's arguments, in bytes.
DEFAULT_MAX_ARGS = 64 * 1024


@dataclass(frozen=True)
class Requirements:
    """What a slave must have to be given a task."""

    min_ram: int = 0
    min_cores: int = 0
    tags: tuple[str, ...] = ()
    hostname: str | None = None

    @classmethod
    def from_wire(cls, wanted: messages.TaskRequirements | None) -> Requirements:
        if wanted is None:
            return cls()
        return cls(wanted.min_ram, wanted.min_cores, tuple(sorted(set(wanted.tags))), wanted.hostname)

    @classmethod
    def parse(cls, raw: Any) -> Requirements:
        """Requirements as stored (plain JSON). @raise ValueError: saying what is wrong."""
        try:
            return cls.from_wire(msgspec.convert(raw, messages.TaskRequirements | None))
        except msgspec.ValidationError as e:
            raise ValueError(f"bad requirements: {e}") from None

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

    def unmet(self, computer_details: messages.ComputerDetails | None,
              tags: frozenset[str]) -> str | None:
        """
        Why a slave with these facts and tags may not run the task, or
        C{None} when it may.  A fact the slave could not read counts as unmet.
        """
        facts = computer_details or _NO_FACTS
        if self.min_ram:
            if facts.ram is None or facts.ram < self.min_ram:
                return f"min_ram={self.min_ram}"
        if self.min_cores:
            if facts.cpu_cores is None or facts.cpu_cores < self.min_cores:
                return f"min_cores={self.min_cores}"
        if self.tags and not tags.issuperset(self.tags):
            return f"tags={','.join(self.tags)}"
        if self.hostname is not None and facts.hostname != self.hostname:
            return f"hostname={self.hostname}"
        return None


_NO_FACTS = messages.ComputerDetails()


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
    #: Bytes of C{args_json} in UTF-8: what the task's arguments hold.
    args_size: int = 0

    @classmethod
    def check(cls, spec: messages.TaskSpec, max_args: int = DEFAULT_MAX_ARGS) -> TaskSpec:
        """@raise ValueError: saying what is wrong with the spec."""
        args = spec.args or {}
        args_json = wire.strict_json(args)
        size = len(args_json.encode("utf-8"))
        if size > max_args:
            raise ValueError(f"args of {size} bytes exceed the {max_args} byte limit")
        return cls(spec.name, args, Requirements.from_wire(spec.requirements), spec.timeout,
                   spec.retries, spec.key, args_json, size)

    @classmethod
    def parse(cls, raw: Any, max_args: int = DEFAULT_MAX_ARGS) -> TaskSpec:
        """A spec given as plain JSON values. @raise ValueError: saying what is wrong."""
        try:
            spec = msgspec.convert(raw, messages.TaskSpec)
        except msgspec.ValidationError as e:
            raise ValueError(str(e)) from None
        return cls.check(spec, max_args)


def parse_submission(specs: list[messages.TaskSpec], max_args: int = DEFAULT_MAX_ARGS) -> list[TaskSpec]:
    """
    The specs of a C{submit}, all checked.

    @raise wire.BadMessage: for the first bad spec, with its C{index}.
    """
    checked = []
    keys: set[str] = set()
    for index, spec in enumerate(specs):
        try:
            task = TaskSpec.check(spec, max_args)
        except ValueError as e:
            raise wire.BadMessage(f"task {index}: {e}", index=index) from None
        if task.key is not None:
            if task.key in keys:
                raise wire.BadMessage(f"task {index}: key {task.key!r} appears twice", index=index)
            keys.add(task.key)
        checked.append(task)
    return checked
