"""Who is asking: pluggable authenticators that turn a request into a principal.

An approval is evidence only if the ledger names who gave it, and that name
must come from authentication, never from a form field the approver fills in
(NIST SP 800-53 AU-10, non-repudiation; IA-2, identification). So the web app
never reads an identity from a request body: each request is passed to the
configured :class:`Authenticator` objects in turn, and the first
:class:`Principal` one returns is who acts. The principal's ``id`` is the
actor id the engine records (statecraft/web/decide.py is the one place it is
handed over).

Two authenticators ship, both opt-in (``statecraft serve`` refuses to start
with none):

* :class:`ProxyHeaderAuthenticator`: a single-sign-on reverse proxy (oauth2-proxy,
  Apache ``mod_auth_*``, nginx ``auth_request``) authenticates the person
  and sets a header such as ``X-Forwarded-User``. A header is trivially
  forged by anyone who can reach the app directly, so it is trusted only
  when explicitly enabled, only from the proxy's addresses
  (``--trusted-proxy``, loopback by default), and never when it appears
  twice.
* :class:`UsersFileAuthenticator`: HTTP Basic, and the login form, against a
  local users file of salted scrypt hashes (statecraft/web/users.py). A
  successful check is cached for a few minutes under an HMAC of the
  credentials, because Basic sends the password with every request and
  scrypt is deliberately slow.

Embedders can pass their own object with ``authenticate(request)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from starlette.requests import HTTPConnection

from ..errors import DefinitionError
from .users import UserRecord, read_users, valid_id, verify_password

__all__ = [
    "Authenticator",
    "PasswordAuthenticator",
    "Principal",
    "ProxyHeaderAuthenticator",
    "UsersFileAuthenticator",
]

log = logging.getLogger("statecraft.web")


@dataclass(frozen=True)
class Principal:
    """An authenticated person.

    Attributes:
        id: the stable actor id recorded on the audit events they cause.
        login: the name they authenticated with (a login, or the proxy's user name).
        method: how: ``basic`` (HTTP Basic), ``password`` (a password check, as
            the login form makes), ``session`` (the login form's cookie) or ``proxy-header``.
    """

    id: str
    login: str
    method: str


@runtime_checkable
class Authenticator(Protocol):
    """Turns a request into a :class:`Principal`, or ``None`` if it carries no valid identity."""

    def authenticate(self, request: HTTPConnection) -> Principal | None:
        """The request's principal, or ``None``. Must not raise for bad input."""
        ...


@runtime_checkable
class PasswordAuthenticator(Authenticator, Protocol):
    """An authenticator that also backs the login form and its session cookie."""

    def check_password(self, login: str, password: str) -> Principal | None:
        """The principal if ``login`` and ``password`` match, else ``None``."""
        ...

    def lookup(self, login: str) -> Principal | None:
        """The principal of a login that still exists (a session is only as valid as its user)."""
        ...


class ProxyHeaderAuthenticator:
    """Trusts a header set by an authenticating reverse proxy, from the proxy's addresses only.

    Args:
        header: the header name, e.g. ``X-Forwarded-User``.
        trusted_proxies: addresses or networks (``10.0.0.0/8``) of the proxy;
            a request from anywhere else is not authenticated by the header.

    Raises:
        DefinitionError: an empty header name or a malformed address.
    """

    def __init__(self, header: str, trusted_proxies: Sequence[str] = ("127.0.0.1", "::1")) -> None:
        if not header.strip():
            raise DefinitionError("the proxy header name is empty")
        self.header = header.strip()
        try:
            self.trusted = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies)
        except ValueError as exc:
            raise DefinitionError(f"--trusted-proxy: {exc}") from exc

    def describe(self) -> str:
        """One line for the start-up banner."""
        return f"proxy header {self.header} from {', '.join(str(n) for n in self.trusted)}"

    def authenticate(self, request: HTTPConnection) -> Principal | None:
        """The principal the proxy named, if the request came from a trusted proxy."""
        values = request.headers.getlist(self.header)
        if not values:
            return None
        peer = request.client.host if request.client else None
        try:
            trusted = peer is not None and any(ipaddress.ip_address(peer) in n for n in self.trusted)
        except ValueError:
            trusted = False
        if not trusted:
            log.warning("ignored %s header from untrusted peer %s", self.header, peer)
            return None
        if len(values) != 1:
            log.warning("ignored %s header sent %d times", self.header, len(values))
            return None
        user = values[0].strip()
        if valid_id(user) is not None:
            return None
        return Principal(id=user, login=user, method="proxy-header")


class UsersFileAuthenticator:
    """HTTP Basic and login-form authentication against a users file (statecraft/web/users.py).

    The file is read again when it changes on disk, so removing a line locks
    its user out (sessions included) without a restart; a file that became
    unreadable or malformed authenticates nobody until fixed.

    Args:
        path: the users file.
        cache_for: how long a successful password check is remembered.
        clock: monotonic seconds; inject for tests.

    Raises:
        DefinitionError: the file cannot be read, is malformed, or is
            writable by other users.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_for: timedelta = timedelta(minutes=5),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self._users = read_users(self.path)
        self._stamp = self._file_stamp()
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, tuple[str, float, str]] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self._cache_seconds = cache_for.total_seconds()
        self._clock = clock

    def describe(self) -> str:
        """One line for the start-up banner."""
        return f"users file {self.path} ({len(self._users)} users; HTTP Basic and login form)"

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _current(self) -> dict[str, UserRecord]:
        stamp = self._file_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._cache.clear()
                try:
                    self._users = read_users(self.path)
                except DefinitionError as exc:
                    log.error("users file unusable, nobody can log in: %s", exc)
                    self._users = {}
            return self._users

    def lookup(self, login: str) -> Principal | None:
        """The principal of ``login`` if it is still in the file."""
        user = self._current().get(login)
        return None if user is None else Principal(user.principal, user.login, "session")

    def check_password(self, login: str, password: str) -> Principal | None:
        """The principal if the password matches (scrypt, constant-time compare), else ``None``."""
        users = self._current()
        user = users.get(login)
        key = hmac.new(self._cache_key, f"{login}\x00{password}".encode(), hashlib.sha256).digest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if user is not None and hit is not None and hit[1] > now and hit[2] == user.password_hash:
            return Principal(user.principal, user.login, "password")
        if not verify_password(password, None if user is None else user.password_hash):
            return None
        assert user is not None
        with self._lock:
            self._cache[key] = (user.principal, now + self._cache_seconds, user.password_hash)
            while len(self._cache) > 1024:
                self._cache.popitem(last=False)
        return Principal(user.principal, user.login, "password")

    def authenticate(self, request: HTTPConnection) -> Principal | None:
        """The principal named by a valid ``Authorization: Basic`` header, else ``None``."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        login, sep, password = decoded.partition(":")
        if not sep:
            return None
        found = self.check_password(login, password)
        return None if found is None else Principal(found.id, found.login, "basic")
