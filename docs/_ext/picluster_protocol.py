"""
Sphinx directives that write the protocol reference from the code.

Every message type, its payload's fields (name, type, limits, meaning,
default), who sends it and what answers it come from the declarations in
L{picluster.wire.messages}; the refusal texts from its table of them; the
API's names for the wire's readings from L{picluster.master.views}.  The
reference cannot drift from the code, because it is the code.

Directives:

- ``.. picluster-messages::`` one section per message type.
- ``.. picluster-shapes::`` the objects the payloads nest (task specs,
  requirements, runs, errors, the throttling flags).
- ``.. picluster-refusals::`` every ``bad_message`` text.
- ``.. picluster-api-names::`` which wire field each API field shows.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: The modules the reference is written from.
MESSAGES_MODULE = "picluster.wire.messages"
VIEWS_MODULE = "picluster.master.views"


def _messages() -> Any:
    import importlib

    return importlib.import_module(MESSAGES_MODULE)


def _limits(info: Any) -> list[str]:
    shown = []
    for name, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        value = getattr(info, name, None)
        if value is not None:
            shown.append(f"{sign} {value:,}" if isinstance(value, int) else f"{sign} {value:g}")
    for name, words in (("min_length", "at least {} long"), ("max_length", "at most {} long")):
        value = getattr(info, name, None)
        if value is not None:
            shown.append(words.format(f"{value:,}"))
    pattern = getattr(info, "pattern", None)
    if pattern is not None:
        shown.append(f"matching ``{pattern}``")
    return shown


def describe(info: Any) -> tuple[str, str]:
    """A type as words (with its limits), and its description if it has one."""
    description = ""
    if isinstance(info, mi.Metadata):
        description = (info.extra_json_schema or {}).get("description", "")
        description = re.sub(r"(--[\w-]+)", r"``\1``", description)
        info = info.type
    if isinstance(info, mi.UnionType):
        parts = [describe(member)[0] for member in info.types]
        return " or ".join(parts), description
    if isinstance(info, mi.IntType):
        words = "integer"
    elif isinstance(info, mi.FloatType):
        words = "number"
    elif isinstance(info, mi.StrType):
        words = "string"
    elif isinstance(info, mi.BoolType):
        words = "boolean"
    elif isinstance(info, mi.NoneType):
        words = "null"
    elif isinstance(info, (mi.AnyType, mi.RawType)):
        words = "any JSON"
    elif isinstance(info, mi.LiteralType):
        words = " or ".join(f'``"{value}"``' for value in info.values)
    elif isinstance(info, mi.StructType):
        words = f":ref:`{info.cls.__name__} <shape-{info.cls.__name__}>`"
    elif isinstance(info, mi.ListType):
        words = f"list of {describe(info.item_type)[0]}"
    elif isinstance(info, mi.DictType):
        words = f"object of {describe(info.value_type)[0]} by name"
    else:
        words = type(info).__name__
    limits = _limits(info)
    if limits:
        words += f" ({', '.join(limits)})"
    return words, description


def _default(field: Any) -> str:
    if field.required:
        return "required"
    if field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:
        value = field.default
    return f"``{msgspec.json.encode(value).decode()}``"


def field_table(struct: type) -> list[str]:
    """A list-table of a Struct's fields."""
    info = mi.type_info(struct)
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 30 40 12",
        "",
        "   * - field",
        "     - type",
        "     - meaning",
        "     - default",
    ]
    for field in info.fields:
        words, description = describe(field.type)
        lines += [
            f"   * - ``{field.encode_name}``",
            f"     - {words}",
            f"     - {description or ' '}",
            f"     - {_default(field)}",
        ]
    extra = "refused" if info.forbid_unknown_fields else "ignored"
    return lines + ["", f"Fields it does not declare are {extra}.", ""]


def _payload_lines(shape: Any) -> list[str]:
    if shape is None:
        return ["Payload: ``null``.", ""]
    info = mi.type_info(shape)
    core = info.type if isinstance(info, mi.Metadata) else info
    if isinstance(core, mi.StructType):
        return ["Payload:", ""] + field_table(core.cls)
    words, description = describe(info)
    return [f"Payload: {words}{f': {description}' if description else ''}.", ""]


def _nested(shape: Any, found: dict[str, type]) -> None:
    """Every Struct reachable from C{shape}, by name."""
    if shape is None:
        return
    info = mi.type_info(shape)

    def walk(node: Any) -> None:
        if isinstance(node, mi.Metadata):
            walk(node.type)
        elif isinstance(node, mi.UnionType):
            for member in node.types:
                walk(member)
        elif isinstance(node, (mi.ListType, mi.SetType, mi.FrozenSetType)):
            walk(node.item_type)
        elif isinstance(node, mi.DictType):
            walk(node.value_type)
        elif isinstance(node, mi.StructType):
            if node.cls.__name__ not in found:
                found[node.cls.__name__] = node.cls
                for field in node.fields:
                    walk(field.type)

    walk(info)


class _Generated(SphinxDirective):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(_messages().__file__)
        container = nodes.section() if self.titles else nodes.container()
        content = StringList(self.lines(), source="(generated from picluster.wire.messages)")
        if self.titles:
            nested_parse_with_titles(self.state, content, container)
            return list(container.children)
        self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)

    titles = False


class MessagesDirective(_Generated):
    """One section per message type, in the order they are declared."""

    titles = True

    def lines(self) -> list[str]:
        messages = _messages()
        out: list[str] = []
        for message in messages.MESSAGES.values():
            title = f"``{message.type}``"
            out += [f".. _message-{message.type}:", "", title, "-" * len(title), ""]
            out += [message.doc, ""]
            out += [f"Sent by: {', '.join(message.senders)}.", ""]
            if message.replies:
                replies = ", ".join(f":ref:`{name} <message-{name}>`" if name in messages.MESSAGES
                                    else f"``{name}``" for name in message.replies)
                out += [f"Answered with: {replies} (or ``bad_message``, ``error``).", ""]
            out += _payload_lines(message.payload)
            for name, shape in message.replies.items():
                if name in messages.MESSAGES and messages.MESSAGES[name].payload == shape:
                    continue
                words = _payload_lines(shape)
                words[0] = f"Payload of the ``{name}`` answer:" + words[0][len("Payload:"):]
                out += words
            if message.on_refusal:
                details = ", ".join(f"``{key}``" for key in message.on_refusal if key != "close")
                closing = " and the connection is closed" if message.on_refusal.get("close") else ""
                out += [f"A refusal of it carries {details}{closing}.", ""]
        return out


class ShapesDirective(_Generated):
    """The objects the payloads nest, each with its fields."""

    titles = True

    def lines(self) -> list[str]:
        messages = _messages()
        top = set()
        found: dict[str, type] = {}
        for message in messages.MESSAGES.values():
            info = mi.type_info(message.payload) if message.payload is not None else None
            core = info.type if isinstance(info, mi.Metadata) else info
            if isinstance(core, mi.StructType):
                top.add(core.cls.__name__)
            _nested(message.payload, found)
            for shape in message.replies.values():
                _nested(shape, found)
        out: list[str] = []
        for name, struct in sorted(found.items()):
            out += [f".. _shape-{name}:", "", name, "-" * len(name), ""]
            doc = (struct.__doc__ or "").strip()
            if doc:
                out += [" ".join(doc.replace("C{", "``").replace("}", "``").split()), ""]
            if name in top:
                users = [m.type for m in messages.MESSAGES.values()
                         if _struct_name(m.payload) == name]
                out += [f"The payload of {', '.join(f'``{u}``' for u in users)}.", ""]
            out += field_table(struct)
        return out


def _struct_name(shape: Any) -> str | None:
    if shape is None:
        return None
    info = mi.type_info(shape)
    core = info.type if isinstance(info, mi.Metadata) else info
    if isinstance(core, mi.UnionType):
        core = next((t for t in core.types if isinstance(t, mi.StructType)), None)
    return core.cls.__name__ if isinstance(core, mi.StructType) else None


class RefusalsDirective(_Generated):
    """Every C{bad_message} text, and when it is sent."""

    def lines(self) -> list[str]:
        out = [".. list-table::", "   :header-rows: 1", "   :widths: 40 60", "",
               "   * - ``error``", "     - when"]
        for text, when in _messages().REFUSAL_TEXTS:
            out += [f"   * - ``{text}``", f"     - {when}"]
        return out + [""]


class ApiNamesDirective(_Generated):
    """Which wire field each field of the API's slave summary shows."""

    def lines(self) -> list[str]:
        import importlib

        views = importlib.import_module(VIEWS_MODULE)
        self.env.note_dependency(views.__file__)
        out = [".. list-table::", "   :header-rows: 1", "   :widths: 30 30 40", "",
               "   * - API field", "     - wire field", "     - from"]
        for table, message in ((views.FACTS_SHOWN, "computer_details"), (views.VITALS_SHOWN, "vitals")):
            for shown, sent, _ in table:
                out += [f"   * - ``{shown}``", f"     - ``{sent}``", f"     - ``{message}``"]
        return out + [""]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("picluster-messages", MessagesDirective)
    app.add_directive("picluster-shapes", ShapesDirective)
    app.add_directive("picluster-refusals", RefusalsDirective)
    app.add_directive("picluster-api-names", ApiNamesDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["describe", "field_table", "setup"]
