"""Signed tokens for the web app: session cookies and per-form CSRF tokens.

Why signed and stateless: the app keeps no session table, so any number of
requests (and a restarted process given the same ``--secret-file``) agree on
who is logged in without a shared store. A token is
``base64url(JSON body) "." base64url(HMAC-SHA256(secret, purpose NUL body))``;
the purpose (``session``, ``csrf``) is inside the MAC, so a token minted for
one use is worthless for another. Every token carries its issue time and is
refused after its maximum age.

Why CSRF tokens on top of ``SameSite=Strict`` cookies: HTTP Basic
credentials and reverse-proxy identities are attached by the browser or the
proxy to *any* request, including a form another site submits. A CSRF token
is bound to the subject (the session id, or the principal when there is no
session) and to the one form it was rendered for (``approve:RUN_ID``), so
an attacker can neither forge one nor replay one minted for someone else or
for another run (OWASP CSRF Prevention Cheat Sheet, "synchronizer token").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["Signer"]

_MIN_SECRET_BYTES: Final = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Mints and checks HMAC-signed tokens.

    Args:
        secret: at least 32 bytes; ``None`` draws a random one (tokens then
            die with the process).
        clock: seconds since the epoch; inject for tests of expiry.

    Raises:
        ValueError: a secret shorter than 32 bytes.
    """

    def __init__(self, secret: bytes | None = None, *, clock: Callable[[], float] = time.time) -> None:
        if secret is not None and len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"the web secret must be at least {_MIN_SECRET_BYTES} bytes")
        self._secret = secret if secret is not None else secrets.token_bytes(_MIN_SECRET_BYTES)
        self._clock = clock

    def _mac(self, purpose: str, body: bytes) -> bytes:
        return hmac.new(self._secret, purpose.encode("utf-8") + b"\x00" + body, hashlib.sha256).digest()

    def sign(self, purpose: str, claims: dict[str, Any]) -> str:
        """A token for ``purpose`` carrying ``claims`` (JSON-able) and its issue time ``iat`` (seconds)."""
        body = json.dumps({**claims, "iat": int(self._clock())}, sort_keys=True, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._mac(purpose, body))}"

    def check(self, purpose: str, token: str | None, *, max_age_s: int) -> dict[str, Any] | None:
        """The claims of a genuine, unexpired token for ``purpose``; ``None`` otherwise. Pure.

        Args:
            purpose: what the token must have been minted for.
            token: the token, or ``None``.
            max_age_s: refuse tokens issued longer ago than this (seconds).
        """
        if not token or token.count(".") != 1 or len(token) > 4096:
            return None
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            claims = json.loads(body)
        except ValueError:
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("iat"), int):
            return None
        age = self._clock() - claims["iat"]
        if age > max_age_s or age < -60:  # a token from the future: a clock jump or forgery
            return None
        return claims

    def csrf_token(self, subject: str, form: str) -> str:
        """A CSRF token for ``form`` (e.g. ``approve:RUN_ID``) rendered for ``subject``."""
        return self.sign("csrf", {"s": subject, "f": form, "n": secrets.token_hex(8)})

    def csrf_ok(self, token: str | None, subject: str, form: str, *, max_age_s: int) -> bool:
        """Whether ``token`` was minted by :meth:`csrf_token` for this subject and form, and is fresh. Pure."""
        claims = self.check("csrf", token, max_age_s=max_age_s)
        return claims is not None and claims.get("s") == subject and claims.get("f") == form
