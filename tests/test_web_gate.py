"""
Who may see the dashboard: loopback answers to local names only, and
beyond loopback a credential is needed unless --web-public.

The site listens on a real loopback port; the gate is told where it
"listens" so that both of its modes are exercised with real HTTP.
"""

from __future__ import annotations

import shutil
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from picluster.master.web.gate import SESSION_COOKIE, host_is_local, is_loopback
from picluster.trust.cluster import ClusterTrust
from tests.test_trust import TrustDirectory
from tests.webhelpers import WebMaster


class HostTests(unittest.TestCase):
    """The Host header names this machine, or the request is refused."""

    def test_localNames(self) -> None:
        for header in [b"localhost", b"localhost:8080", b"127.0.0.1:8080", b"[::1]:8080",
                       b"LOCALHOST.", b"dash.localhost:80", b"127.1.2.3"]:
            self.assertTrue(host_is_local(header), header)

    def test_otherNames(self) -> None:
        for header in [None, b"", b"evil.example", b"evil.example:8080", b"10.0.0.2:8080",
                       b"[fe80::1]:80", b"localhost.evil.example", b"\xff"]:
            self.assertFalse(host_is_local(header), header)

    def test_loopbackAddresses(self) -> None:
        self.assertTrue(is_loopback("127.0.0.1"))
        self.assertTrue(is_loopback("::1"))
        self.assertFalse(is_loopback("0.0.0.0"))
        self.assertFalse(is_loopback("::"))
        self.assertFalse(is_loopback("192.168.1.10"))


class GateTestCase(TrustDirectory):
    def web(self, listening_on: str, public: bool = False, trust: Any = "cluster") -> WebMaster:
        web = WebMaster(self)
        web.site.gate.trust = self.trust if trust == "cluster" else trust
        web.site.gate.public = public
        web.site.gate.listening_on(listening_on)
        return web


class LoopbackTests(GateTestCase):
    @defer.inlineCallbacks
    def test_rebindingRefused(self) -> Any:
        """On loopback, a request naming another host (DNS rebinding) gets 421 and no data."""
        web = self.web("127.0.0.1")
        response = yield web.get("/api/master", headers={"Host": "evil.example:8080"})
        self.assertEqual(response.code, 421)
        self.assertNotIn(b"version", response.body)
        response = yield web.get("/api/master")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("x-content-type-options"), "nosniff")


class BeyondLoopbackTests(GateTestCase):
    @defer.inlineCallbacks
    def test_apiNeedsToken(self) -> Any:
        """Beyond loopback the API answers 401 without a token, 200 with the read-only one."""
        web = self.web("0.0.0.0")
        response = yield web.get("/api/slaves", headers={"Host": "pi-master:8080"})
        self.assertEqual(response.code, 401)
        self.assertEqual(response.header("www-authenticate"), 'Bearer realm="picluster"')
        for credential in ("read-only", "client"):
            token = self.trust.token(credential)
            response = yield web.get("/api/slaves", headers={"Authorization": f"Bearer {token}"})
            self.assertEqual(response.code, 200, credential)
        response = yield web.get("/metrics", headers={"Authorization": f"Bearer {self.trust.token('slave')}"})
        self.assertEqual(response.code, 401)

    @defer.inlineCallbacks
    def test_browserSignsIn(self) -> Any:
        """A browser is sent to /login, signs in with the token once, then sees the page."""
        web = self.web("::")
        response = yield web.get("/", follow=False)
        self.assertEqual((response.code, response.header("location")), (303, "/login"))
        response = yield web.get("/login")
        self.assertIn(b'<form method="post" action="/login">', response.body)
        wrong = yield web.get("/login?token=PIC1:nope", method=b"POST", follow=False)
        self.assertEqual(wrong.code, 403)
        token = self.trust.token("read-only")
        signed = yield web.get(f"/login?token={token}", method=b"POST", follow=False)
        self.assertEqual(signed.code, 302)
        [cookie] = signed.headers.getRawHeaders("set-cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertNotIn(token.secret, cookie)
        session = cookie.split(";")[0]
        page = yield web.get("/", headers={"Cookie": session})
        self.assertEqual(page.code, 200)
        forged = yield web.get("/api/master", headers={"Cookie": f"{SESSION_COOKIE.decode()}=00"})
        self.assertEqual(forged.code, 401)

    @defer.inlineCallbacks
    def test_rotationEndsSessions(self) -> Any:
        """New secrets end every browser session and refuse the old token."""
        directory = self.mktemp()
        shutil.copytree(self.trust.state_dir, directory)
        trust = ClusterTrust.open(directory)
        web = self.web("0.0.0.0", trust=trust)
        old = trust.token("read-only")
        signed = yield web.get(f"/login?token={old}", method=b"POST", follow=False)
        session = signed.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        ClusterTrust.open(directory).rotate()
        for headers in ({"Cookie": session}, {"Authorization": f"Bearer {old}"}):
            response = yield web.get("/api/master", headers=headers)
            self.assertEqual(response.code, 401, headers)

    @defer.inlineCallbacks
    def test_public(self) -> Any:
        """--web-public serves beyond loopback without a credential."""
        web = self.web("0.0.0.0", public=True)
        response = yield web.get("/api/master", headers={"Host": "pi-master:8080"})
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_plainMasterNeedsPublic(self) -> Any:
        """A plain master (no tokens) serves beyond loopback only with --web-public."""
        web = self.web("0.0.0.0", trust=None)
        response = yield web.get("/api/master")
        self.assertEqual(response.code, 403)
        self.assertIn(b"--web-public", response.body)
