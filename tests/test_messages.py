"""
Tests for L{picluster.wire.messages}: every message is declared once, and
the code speaks only what is declared.
"""

from __future__ import annotations

import ast
import json
import os

import msgspec
from twisted.trial import unittest

from picluster.client.connection import ClientConnection
from picluster.master.connection import PeerConnection
from picluster.slave.session import SlaveSession
from picluster.wire import messages
from picluster.wire.protocol import PeerHandler
from tests.processes import REPO_ROOT

#: Each handler class, and the side whose messages it receives.
HANDLERS = {
    PeerHandler: set(messages.ANYONE),
    PeerConnection: {messages.SLAVE, messages.CLIENT},
    SlaveSession: {messages.MASTER},
    ClientConnection: {messages.MASTER},
}


def handled(handler: type) -> set[str]:
    return {name[len("msg_"):] for name in dir(handler) if name.startswith("msg_")}


def sent_types() -> dict[str, str]:
    """Every message type the package sends by name, to where it is sent."""
    found = {}
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, "picluster")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as source:
                tree = ast.parse(source.read())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("send", "request") and node.args
                        and isinstance(node.args[0], ast.Constant)
                        and isinstance(node.args[0].value, str)):
                    found[node.args[0].value] = f"{path}:{node.lineno}"
                # A handler's answer: return ("type", payload).
                if (isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple)
                        and len(node.value.elts) == 2 and isinstance(node.value.elts[0], ast.Constant)
                        and isinstance(node.value.elts[0].value, str)):
                    found[node.value.elts[0].value] = f"{path}:{node.lineno}"
    return found


class DeclarationTests(unittest.TestCase):
    """The declarations cover the code, and the code covers the declarations."""

    def test_everyHandledTypeIsDeclared(self):
        """Each msg_ handler of each side handles a declared type that its peers send."""
        for handler, senders in HANDLERS.items():
            for name in handled(handler):
                self.assertIn(name, messages.MESSAGES, f"{handler.__name__}.msg_{name}")
                self.assertTrue(set(messages.MESSAGES[name].senders) & senders,
                                f"{handler.__name__} handles {name}, which none of its peers send")

    def test_everySentTypeIsDeclared(self):
        """Every type the package sends, requests or answers with is declared."""
        found = sent_types()
        self.assertIn("run_task", found)  # the scan itself finds what it should
        for name, where in found.items():
            self.assertIn(name, messages.MESSAGES, where)

    def test_everyRequestIsHandled(self):
        """Each message a side may send (not a reply) has a handler on a side that receives it."""
        receivers = {messages.MASTER: handled(PeerConnection),
                     messages.SLAVE: handled(SlaveSession),
                     messages.CLIENT: handled(ClientConnection)}
        for message in messages.MESSAGES.values():
            if message.reply_only:
                continue
            for sender in message.senders:
                others = [side for side in receivers if side != sender]
                self.assertTrue(any(message.type in receivers[side] for side in others),
                                f"{message.type} from {sender} is handled by nobody")

    def test_repliesAreDeclared(self):
        """What a request may be answered with is a declared type."""
        for message in messages.MESSAGES.values():
            for reply in message.replies:
                self.assertIn(reply, messages.MESSAGES, f"{message.type} -> {reply}")


class ShapeTests(unittest.TestCase):
    """Payloads are decoded into their declared shapes, with limits."""

    def decode(self, message_type: str, payload: object) -> object:
        return messages.DECODERS[message_type].decode(json.dumps(payload))

    def test_limits(self):
        """Limits are part of the shape: over them is a validation error naming the field."""
        good = {"slots": 4, "tasks": ["primes"]}
        self.assertEqual(self.decode("worker", good).slots, 4)
        for field, bad in (("slots", 0), ("slots", messages.MAX_SLOTS + 1), ("tasks", [""]),
                           ("tasks", ["t"] * (messages.MAX_OFFERS + 1)), ("prefetch", -1),
                           ("prefetch", messages.MAX_PREFETCH + 1),
                           ("holding", [{"id": 1, "attempt": 1}]
                            * (messages.MAX_SLOTS + messages.MAX_PREFETCH + 1))):
            e = self.assertRaises(msgspec.ValidationError, self.decode, "worker", {**good, field: bad})
            self.assertIn(f"$.{field}", str(e))

    def test_strictSpecs(self):
        """A task spec with a field nobody knows is refused; a vitals report ignores one."""
        self.assertRaises(msgspec.ValidationError, self.decode, "submit",
                          {"tasks": [{"name": "primes", "priority": 1}]})
        self.assertEqual(self.decode("vitals", {"uptime": 1, "fan": 3}).uptime, 1)

    def test_refusalFacts(self):
        """A refusal names the bad spec's index and, for an unknown field, the known ones."""
        submit = messages.MESSAGES["submit"]
        self.assertEqual(submit.refusal("tasks[12].name", "Expected `str`"), {"index": 12})
        facts = submit.refusal("tasks[0].requirements", "Object contains unknown field `gpu`")
        self.assertEqual(facts, {"index": 0, "known": ["min_ram", "min_cores", "tags", "hostname"]})
        hello = messages.MESSAGES["hello"]
        self.assertEqual(hello.refusal("uuid", "Expected `str | null`"),
                         {"close": True, "supported": list(messages.SUPPORTED_VERSIONS)})

    def test_fieldsAt(self):
        """fields_at walks lists, optional values and nested objects."""
        self.assertEqual(messages.fields_at(messages.Submit, None), ["tasks"])
        self.assertEqual(messages.fields_at(messages.Submit, "tasks[3]")[0], "name")
        self.assertIsNone(messages.fields_at(messages.Submit, "tasks[3].name"))

    def test_refusalTextsUnique(self):
        """Each refusal text is listed once."""
        texts = [text for text, _ in messages.REFUSAL_TEXTS]
        self.assertEqual(len(texts), len(set(texts)))
