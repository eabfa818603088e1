"""
The exceptions of tasks, and the error kinds of the wire contract.

Only the standard library is imported here: a task's child process imports
this module on every run, and must start quickly even on a Pi.
"""

from __future__ import annotations

from typing import Any

from picluster.text import clip

#: Characters of an error's message a result carries (the start): a task's
#: exception chooses it, and the result must fit in a frame.
MESSAGE_LIMIT = 4 * 1024

#: Characters of a traceback a result carries (the end, where the error is).
TRACEBACK_LIMIT = 16 * 1024


class BadArguments(Exception):
    """The arguments do not fit the task; retrying cannot help (kind C{bad_arguments})."""


class NotPermitted(Exception):
    """This slave refuses to run the task as asked (kind C{not_permitted})."""


class CommandFailed(Exception):
    """
    A command a task ran exited with a non-zero status (kind C{error}).

    @ivar details: Output worth showing beside the message (reported in the
        error's C{traceback} slot, which is otherwise empty for a command).
    """

    def __init__(self, message: str, details: str | None = None):
        super().__init__(message)
        self.details = details


class ChildCrashed(Exception):
    """
    A child process died by a signal this slave did not send (kind C{crashed}).

    Not the task's fault as far as anyone can tell (the OOM killer, say), so the
    master may retry it elsewhere.
    """


class TaskFailed(Exception):
    """A failure already described as a task_result C{error} object (from a child)."""

    def __init__(self, error: dict[str, Any]):
        super().__init__(error.get("message", ""))
        self.error = error


def error_payload(type_: str, message: str, kind: str = "error",
                  traceback: str | None = None) -> dict[str, Any]:
    """A task_result C{error} object, its texts cut to their limits."""
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT - 1] + "\u2026"
    if traceback is not None:
        traceback = traceback[-TRACEBACK_LIMIT:]
    return {"type": clip(type_), "message": message, "traceback": traceback, "kind": kind}


def admin_refusal(name: str) -> str:
    """Why an admin task is refused on a slave without C{--allow-admin}."""
    return f"{name} is refused: this slave was not started with --allow-admin"


def error_kind(exception: BaseException) -> str:
    """The contract's error kind for an exception a task raised."""
    if isinstance(exception, BadArguments):
        return "bad_arguments"
    if isinstance(exception, NotPermitted):
        return "not_permitted"
    if isinstance(exception, ChildCrashed):
        return "crashed"
    return "error"
