"""
Sphinx extension: option tables generated from picluster's command lines.

Two directives, so that the documented options cannot drift from the code:

``.. picluster-options:: NAME``
    A table (option, short form, default, description) of one
    L{twisted.python.usage.Options} subclass: its C{optParameters},
    C{optFlags} and C{opt_*} methods with docstrings, with the coerce
    documentation of parameters that have one.  C{NAME} is a key of
    L{OPTIONS_CLASSES} (or, failing that, a dotted path to the class).
    Option ``:exclude: help,version`` leaves options out.

``.. picluster-command:: NAME``
    The same for a command with C{subCommands}: a section per sub-command,
    with its synopsis, its description and its table.  Takes ``:exclude:``
    too, applied to every table.

The defaults come from the Options class; when it leaves the default to be
applied later (as picluster's settings do), the ``[default: X]`` at the end of
the option's help text is used instead, and cut from the description.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

#: Every picluster module path these docs import, in this one place: update
#: it when the package moves.  Keys are what the .rst files name; a value is
#: the class's dotted path.
OPTIONS_CLASSES: dict[str, str] = {
    "picluster-master": "picluster.tap.master.Options",
    "picluster-slave": "picluster.tap.slave.Options",
    "picluster": "picluster.cli.options.PiClusterOptions",
}

#: How each documented command is invoked, for the synopsis lines.
INVOCATIONS = {
    "picluster-master": "twistd -n picluster-master",
    "picluster-slave": "twistd -n picluster-slave",
    "picluster": "picluster",
}

#: Arguments to construct an Options class with, when it needs any.
CONSTRUCTOR_ARGUMENTS: dict[str, tuple[Any, ...]] = {
    "picluster": ({},),  # PiClusterOptions(environ)
}

#: How an empty default reads once made text: shown as no default.
_NO_DEFAULT = ("", "()", "[]", "None")

_DEFAULT_IN_HELP = re.compile(r"\s*\[default:\s*(?P<default>[^\]]*)\]\.?\s*$")


def resolve(name: str) -> type:
    """The Options class a directive names: a key of OPTIONS_CLASSES or a dotted path."""
    module_name, _, attribute = OPTIONS_CLASSES.get(name, name).rpartition(".")
    if not module_name:
        raise ValueError(f"{name!r} is neither a key of OPTIONS_CLASSES nor module.Class")
    return getattr(importlib.import_module(module_name), attribute)


def instantiate(cls: type, name: str | None = None) -> Any:
    """An instance of an Options class, whose tables usage has gathered."""
    arguments = CONSTRUCTOR_ARGUMENTS.get(name or "", ())
    return cls(*arguments)


def option_rows(options: Any, exclude: set[str]) -> list[dict[str, Any]]:
    """
    One dict per option (long, short, kind, default, doc), as C{getUsage}
    gathers them, in declaration order: parameters, flags, then handlers.
    """
    long_to_short: dict[str, str | None] = {}
    for key, long in options.synonyms.items():
        if key != long and len(key) == 1:
            long_to_short[long] = key
        else:
            long_to_short.setdefault(long, None)

    parameters = [row[0] for row in _accumulated(type(options), "optParameters")]
    flags = [row[0] for row in _accumulated(type(options), "optFlags")]
    rank = {name: i for i, name in enumerate(parameters + flags)}
    names = []
    for opt in options.longOpt:
        kind = "parameter" if opt.endswith("=") else "flag"
        names.append((opt.rstrip("="), kind))
    names.sort(key=lambda item: (rank.get(item[0], len(rank)),))

    rows = []
    seen = set()
    for long, kind in names:
        if long in seen or long in exclude:
            continue
        seen.add(long)
        doc = inspect.cleandoc(options.docs.get(long) or "")
        doc = " ".join(doc.split())
        # usage keeps a flag's default as 0: a flag is off unless given.
        default = options.defaults.get(long) if kind == "parameter" else None
        if default is None:
            found = _DEFAULT_IN_HELP.search(doc)
            if found:
                default = found.group("default")
                doc = doc[: found.start()].rstrip()
        if doc and doc[-1] not in ".!?":
            doc += "."
        coerce_doc = getattr(options._dispatch.get(long), "coerceDoc", None)
        if coerce_doc:
            doc = f"{doc} {coerce_doc}".strip()
        default = None if default is None else str(default)
        if default in _NO_DEFAULT:
            default = None
        rows.append({
            "long": long,
            "short": long_to_short.get(long),
            "kind": kind,
            "default": default,
            "doc": doc,
        })
    return rows


def _accumulated(cls: type, attribute: str) -> list[list[Any]]:
    """C{attribute} of C{cls} and its bases, base first, as usage gathers it."""
    rows: list[list[Any]] = []
    for klass in reversed(cls.__mro__):
        rows.extend(klass.__dict__.get(attribute, []) or [])
    return rows


def _literal(text: str) -> nodes.paragraph:
    return nodes.paragraph("", "", nodes.literal(text, text))


def _text(text: str) -> nodes.paragraph:
    return nodes.paragraph(text, text)


def options_table(rows: list[dict[str, Any]]) -> nodes.table:
    """A docutils table of the rows of L{option_rows}."""
    table = nodes.table(classes=["picluster-options"])
    group = nodes.tgroup(cols=4)
    table += group
    for width in (22, 8, 22, 48):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    header = nodes.row()
    for title in ("Option", "Short", "Default", "Description"):
        header += nodes.entry("", _text(title))
    head += header
    body = nodes.tbody()
    group += body
    for option in rows:
        row = nodes.row()
        # A no-break space: "--keepalive VALUE" stays on one line.
        long = f"--{option['long']}" + ("\N{NO-BREAK SPACE}VALUE" if option["kind"] == "parameter" else "")
        row += nodes.entry("", _literal(long))
        row += nodes.entry("", _literal(f"-{option['short']}") if option["short"] else _text(""))
        if option["default"] is None:
            row += nodes.entry("", _text(""))
        else:
            row += nodes.entry("", _literal(option["default"]))
        row += nodes.entry("", _text(option["doc"]))
        body += row
    return table


def _exclude(argument: str | None) -> set[str]:
    return {word.strip().lstrip("-") for word in (argument or "").split(",") if word.strip()}


class OptionsDirective(SphinxDirective):
    """``.. picluster-options:: NAME``: the table of one Options class."""

    required_arguments = 1
    has_content = False
    option_spec = {"exclude": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            cls = resolve(name)
            options = instantiate(cls, name)
        except Exception as e:
            raise self.error(f"picluster-options {name}: {e}") from None
        self.env.note_dependency(inspect.getsourcefile(cls) or "")
        self.env.note_dependency(__file__)
        return [options_table(option_rows(options, _exclude(self.options.get("exclude"))))]


class CommandDirective(SphinxDirective):
    """``.. picluster-command:: NAME``: a section and a table per sub-command."""

    required_arguments = 1
    has_content = False
    option_spec = {"exclude": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            cls = resolve(name)
        except Exception as e:
            raise self.error(f"picluster-command {name}: {e}") from None
        self.env.note_dependency(inspect.getsourcefile(cls) or "")
        self.env.note_dependency(__file__)
        invocation = INVOCATIONS.get(name, name)
        exclude = _exclude(self.options.get("exclude"))
        result: list[nodes.Node] = []
        for command, _short, parser, description in getattr(cls, "subCommands", []):
            self.env.note_dependency(inspect.getsourcefile(parser) or "")
            sub = instantiate(parser)
            title = f"{invocation} {command}"
            # A label for :ref:, e.g. command-picluster-submit.
            label = nodes.fully_normalize_name(f"command-{invocation}-{command}")
            section = nodes.section(ids=[nodes.make_id(label)], names=[label])
            section += nodes.title(title, title)
            self.state.document.note_explicit_target(section)
            synopsis = f"{invocation} {command} {getattr(sub, 'synopsis', '[options]')}".rstrip()
            section += nodes.literal_block(synopsis, synopsis)
            # The longer description when there is one, else the one-liner.
            longdesc = " ".join((getattr(sub, "longdesc", "") or "").split())
            section += _text(longdesc or description)
            rows = option_rows(sub, exclude)
            if rows:
                section += options_table(rows)
            result.append(section)
        return result


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("picluster-options", OptionsDirective)
    app.add_directive("picluster-command", CommandDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
