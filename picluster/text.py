"""
Texts that peers choose, made safe to keep, show and log.

A slave names itself (hostname, model, OS): every view repeats that per node
and per tick, and every log line about the node carries it, so a peer must
not make it a megabyte.
"""

from __future__ import annotations

#: Characters kept of a text a peer reports about itself.
MAX_TEXT = 255


def clip(text: str | None) -> str | None:
    """C{text} cut to L{MAX_TEXT} characters, an ellipsis marking the cut."""
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT - 1] + "\u2026"
