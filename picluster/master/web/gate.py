"""
Who may see the dashboard, its JSON API and C{/metrics}.

The web side only reads, but what it shows (every node, every task's
arguments and results) is the cluster's.  So:

  - On loopback (the default, C{--web tcp:8080:interface=127.0.0.1}) it is
    this machine's, and answers only requests whose C{Host} names this
    machine by a loopback name or address: a page on another site that
    points a name of its own at 127.0.0.1 (DNS rebinding) gets 421.
  - Beyond loopback it needs a credential, unless the master was started
    with C{--web-public}: the read-only token (or the client token), sent as
    C{Authorization: Bearer <token>} (Prometheus's C{authorization}
    setting), or a browser session set by C{/login}, where the token is
    pasted once.  The session cookie is an HMAC of the read-only secret, so
    rotating the tokens ends every session.  A plain master (no tokens)
    serves beyond loopback only with C{--web-public}.

Every answer carries C{X-Content-Type-Options: nosniff}.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import cast

from twisted.web import resource, server

from picluster.trust.cluster import ClusterTrust, TrustError
from picluster.trust.token import CLIENT, READ_ONLY, TokenError, parse_token

#: The browser session's cookie.
SESSION_COOKIE = b"picluster_session"
#: Seconds a browser session lasts (a rotation ends it sooner).
SESSION_SECONDS = 30 * 86400
#: What the session's HMAC covers.
_SESSION_CONTEXT = b"picluster web session v1"
#: The longest token text /login reads.
MAX_TOKEN_TEXT = 256

_LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether C{host} (an address as a port reports it) is a loopback address."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def host_is_local(header: bytes | None) -> bool:
    """Whether a C{Host} header names this machine by a loopback name or address."""
    if not header:
        return False
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        name = text[1:].partition("]")[0]
    else:
        name = text.rpartition(":")[0] if text.count(":") == 1 else text
    name = name.rstrip(".")
    return name in _LOOPBACK_NAMES or name.endswith(".localhost") or is_loopback(name)


class Refusal(resource.Resource):
    """A short plain-text refusal with its status code."""

    isLeaf = True

    def __init__(self, code: int, text: str, headers: dict[bytes, bytes] | None = None):
        super().__init__()
        self.code = code
        self.text = text
        self.headers = headers or {}

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.text.encode("utf-8") + b"\n"


_LOGIN_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>picluster: sign in</title></head>
<body><h1>picluster</h1>
<p>Paste the read-only token that <code>picluster token --read-only</code> prints on the master.</p>
<form method="post" action="/login"><input name="token" size="80" autocomplete="off" autofocus>
<button type="submit">Sign in</button></form></body></html>
"""


class Login(resource.Resource):
    """C{/login}: a form for the token, and the session it starts."""

    isLeaf = True

    def __init__(self, gate: WebGate):
        super().__init__()
        self.gate = gate

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; form-action 'self'; frame-ancestors 'none'")
        return _LOGIN_PAGE

    def render_POST(self, request: server.Request) -> bytes:
        # Twisted types C{args} by its class default, C{None}: a received request's is a dict.
        args = cast("dict[bytes, list[bytes]]", request.args)
        values = args.get(b"token") or [b""]
        text = values[-1][:MAX_TOKEN_TEXT].decode("utf-8", "replace")
        if not self.gate.token_holds(text):
            return Refusal(403, "that is not this cluster's read-only or client token").render(request)
        session = self.gate.session_value()
        assert session is not None
        request.addCookie(SESSION_COOKIE, session, path=b"/", max_age=str(SESSION_SECONDS).encode(),
                          httpOnly=True, sameSite="strict", secure=request.isSecure())
        request.redirect(b"/")
        return b""


class WebGate:
    """
    Decides, for each request, whether it is answered.

    @ivar public: C{--web-public}: no credential asked beyond loopback.
    @ivar loopback: Whether the site listens on loopback only; C{None}
        until it listens (nothing is answered before anyway).
    """

    def __init__(self, trust: ClusterTrust | None, *, public: bool = False):
        self.trust = trust
        self.public = public
        self.loopback: bool | None = None
        self.login = Login(self)

    def listening_on(self, host: str) -> None:
        """The site listens on C{host}: a loopback address, or not."""
        self.loopback = is_loopback(host)

    @property
    def needs_credential(self) -> bool:
        return not self.loopback and not self.public

    def refuse(self, request: server.Request) -> resource.Resource | None:
        """A refusal to answer C{request} with, or C{None} to serve it."""
        if self.loopback is not False:
            if not host_is_local(request.getHeader(b"host")):
                return Refusal(421, "this dashboard answers to localhost only")
            return None
        if self.public:
            return None
        if self.trust is None:
            return Refusal(403, "a plain master serves its dashboard beyond loopback only with"
                                " --web-public")
        if request.path == b"/login":
            return self.login
        if self._credential_holds(request):
            return None
        if request.path.startswith(b"/api/") or request.path == b"/metrics":
            return Refusal(401, "send the read-only token: Authorization: Bearer <token>",
                           {b"www-authenticate": b'Bearer realm="picluster"'})
        request.redirect(b"/login")
        return Refusal(303, "sign in at /login")

    def _credential_holds(self, request: server.Request) -> bool:
        authorization = request.getHeader(b"authorization") or b""
        scheme, _, value = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and value:
            return self.token_holds(value.decode("utf-8", "replace"))
        cookie = request.getCookie(SESSION_COOKIE)
        expected = self.session_value()
        return cookie is not None and expected is not None and hmac.compare_digest(cookie, expected)

    def token_holds(self, text: str) -> bool:
        """Whether C{text} is this cluster's current read-only or client token."""
        if self.trust is None:
            return False
        try:
            token = parse_token(text)
            if token.credential not in (READ_ONLY, CLIENT):
                return False
            current = self.trust.token(token.credential)
        except (TokenError, TrustError):
            return False
        return hmac.compare_digest(str(token).encode(), str(current).encode())

    def session_value(self) -> bytes | None:
        """The cookie of a browser session, from the read-only secret as it is now."""
        if self.trust is None:
            return None
        try:
            key = self.trust.key_of(READ_ONLY)
        except TrustError:
            return None
        assert key is not None
        return hmac.new(key, _SESSION_CONTEXT, hashlib.sha256).hexdigest().encode()

