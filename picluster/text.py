"""
Texts that peers choose, made safe to keep, show and log.

A slave names itself (hostname, model, OS): every view repeats that per node
and per tick, and every log line about the node carries it, so a peer must
not make it a megabyte.  And whatever a master or a slave says (a task's
name, error, result; a hostname) reaches the terminal of whoever looks only
through L{printable}, so that no peer can drive that terminal.
"""

from __future__ import annotations

from collections.abc import Callable

#: Characters kept of a text a peer reports about itself.
MAX_TEXT = 255


def clip(text: str | None) -> str | None:
    """C{text} cut to L{MAX_TEXT} characters, an ellipsis marking the cut."""
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT - 1] + "\u2026"


def _question_mark(char: str) -> str:
    return "?"


def printable(text: str, *, keep: str = "",
              replace: Callable[[str], str] = _question_mark) -> str:
    """
    C{text} fit for a terminal: each character that is not printable
    (control characters such as ESC, CR or backspace, the C1 controls such
    as CSI, format characters such as a right-to-left override, line and
    paragraph separators), except those in C{keep}, is replaced: by C{?},
    or by what C{replace} makes of it.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else replace(char) for char in text)
