"""Who may use the dashboard and the admin API, and which writes are refused.

Two ways in: ``Authorization: Bearer <token>`` (scripts), or the signed session cookie the login
page sets (browsers). A browser gets that cookie by typing the token into the login page, or
from a login link: a one-time ticket, good for a few minutes, exchanged for the cookie, so the
token itself never sits in a URL or a browser's history.

A cookie rides along with any request the browser makes, including ones a hostile page
triggers, so every write it authenticates must also carry the session's CSRF token. Whatever
authenticates a write, a request a browser marks as cross-site is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

from starlette.requests import Request

from conveyor.errors import ConfigurationError

TOKEN_ENV = "CONVEYOR_DASHBOARD_TOKEN"
SESSION_COOKIE = "conveyor_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# Methods that change something; the others only read.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Long enough to switch from the terminal to a browser; a link found later in a scrollback or a
# history is dead by then.
LOGIN_LINK_SECONDS = 300.0

Credential = Literal["bearer", "cookie"]


class HttpError(Exception):
    """An error answered with ``status`` and a JSON body ``{"error": {"type", "message"}}``."""

    status = 400
    kind = "BadRequest"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(HttpError):
    """No valid bearer token or session."""

    status = 401
    kind = "Unauthorized"


class Forbidden(HttpError):
    """Authenticated, but the request is cross-site or lacks the CSRF token."""

    status = 403
    kind = "Forbidden"


def resolve_token(token: str | None) -> str | None:
    """The ``token`` given, else ``CONVEYOR_DASHBOARD_TOKEN``, else None."""
    return token or os.environ.get(TOKEN_ENV) or None


def derive_secret(token: str) -> str:
    """A session signing key derived from the token, so sessions survive a restart with the
    same token and die when the token changes."""
    return hmac.new(token.encode(), b"conveyor dashboard session", hashlib.sha256).hexdigest()


class LoginLinks:
    """One-time login tickets: each signs one browser in, once, within its lifetime.

    They live in this process only (the server that issued one redeems it), and only their
    digests are kept, so the set held cannot be read back as working links.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def issue(self, seconds: float = LOGIN_LINK_SECONDS) -> str:
        """A new ticket, redeemable once within ``seconds``."""
        ticket = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._expiry = {d: t for d, t in self._expiry.items() if t > now}
            self._expiry[_digest(ticket)] = now + seconds
        return ticket

    def redeem(self, ticket: str) -> bool:
        """True if ``ticket`` was issued here, is unused and has not expired; it is spent
        either way."""
        with self._lock:
            expires = self._expiry.pop(_digest(ticket), None)
        return expires is not None and self.clock() < expires


def _digest(ticket: str) -> str:
    return hashlib.sha256(b"conveyor login link:" + ticket.encode()).hexdigest()


class Guard:
    """Checks credentials, CSRF tokens and the origin of writes against one access token, and
    holds the one-time login links issued for it."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigurationError(
                f"the dashboard needs an access token: pass token= or set {TOKEN_ENV}"
            )
        self._token = token
        # The session stores a digest, never the token itself.
        self._grant = hashlib.sha256(b"conveyor grant:" + token.encode()).hexdigest()
        self.links = LoginLinks()

    def token_matches(self, given: str) -> bool:
        """True if ``given`` is the access token (compared in constant time)."""
        return hmac.compare_digest(given.encode(), self._token.encode())

    def log_in(self, request: Request) -> None:
        """Mark the session as authenticated and give it a fresh CSRF token."""
        request.session.clear()
        request.session["grant"] = self._grant
        request.session["csrf"] = secrets.token_urlsafe(32)

    def credential(self, request: Request) -> Credential | None:
        """How the request authenticated, if it did."""
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and given:
            return "bearer" if self.token_matches(given.strip()) else None
        grant = request.session.get("grant")
        if isinstance(grant, str) and hmac.compare_digest(grant, self._grant):
            return "cookie"
        return None

    def require(self, request: Request) -> Credential:
        """The request's credential; :class:`Unauthorized` if it has none."""
        found = self.credential(request)
        if found is None:
            raise Unauthorized("authentication required: a bearer token or a dashboard session")
        return found

    def check_write(self, request: Request, credential: Credential, form_token: str | None) -> None:
        """Refuse a cross-site write, and a cookie-borne write without the session's CSRF token."""
        if is_cross_site(request):
            raise Forbidden("cross-site request refused")
        if credential == "cookie":
            given = request.headers.get(CSRF_HEADER) or form_token or ""
            expected = csrf_token(request)
            if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
                raise Forbidden("missing or wrong CSRF token")


def csrf_token(request: Request) -> str:
    """The CSRF token of the request's session ('' without a session)."""
    value = request.session.get("csrf")
    return value if isinstance(value, str) else ""


def is_cross_site(request: Request) -> bool:
    """True if the browser says the request comes from another site or origin.

    ``Sec-Fetch-Site`` is trusted when sent (browsers set it and pages cannot forge it); else an
    ``Origin`` other than the request's own host is cross-site. Clients that send neither (curl,
    scripts) are not browsers acting for a hostile page.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() != host.lower()


def safe_next(target: str | None, default: str) -> str:
    """``target`` if it is a path on this site, else ``default`` (no open redirects)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default
