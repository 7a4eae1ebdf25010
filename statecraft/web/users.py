"""Local users of the web app: a text file of logins with salted scrypt password hashes.

Why a file: a small deployment (one reviewer team, one database) should not
need an identity provider to get *named* approvals; larger ones put a
single-sign-on proxy in front and use the proxy-header authenticator instead
(statecraft/web/auth.py). Why scrypt: it is in the standard library
(``hashlib.scrypt``), salted, and memory-hard, so a stolen users file is
expensive to brute-force (OWASP Password Storage Cheat Sheet lists it); a
password is never stored or compared in plain text.

The file holds one user per line, three fields separated by white space::

    # login     principal (the actor id recorded on audit events)   hash
    cfo         user:cfo            scrypt$32768$8$1$<salt b64>$<key b64>

``login`` is what the person types (no ``:``, which HTTP Basic reserves);
``principal`` is the stable actor id the ledger records for their
decisions (an email, ``user:cfo``), so an approval policy's group names
principals, not logins. ``#`` starts a comment line. The hash records its
own cost parameters, so raising the default later leaves old entries valid.

Write entries with ``python -m statecraft.web.users add FILE LOGIN``, which
prompts for the password. The file must not be writable by other users:
whoever can add a line can approve as anyone (checked when it is read).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click

from ..errors import DefinitionError, StatecraftError

__all__ = [
    "UserRecord",
    "add_user",
    "hash_password",
    "parse_users",
    "read_users",
    "valid_id",
    "verify_password",
]

SCHEME: Final = "scrypt"
DEFAULT_N: Final = 2**15
"""scrypt CPU/memory cost: 32 MiB and about 80 ms per hash on a 2020s core."""
MIN_N: Final = 2**10
MAX_N: Final = 2**20
_SALT_BYTES: Final = 16
_KEY_BYTES: Final = 32
_MAX_ID_CHARS: Final = 200


@dataclass(frozen=True)
class UserRecord:
    """One line of a users file.

    Attributes:
        login: what the person types at the login prompt.
        principal: the actor id recorded on the events they cause.
        password_hash: ``scrypt$N$r$p$SALT$KEY`` (base64 salt and key).
    """

    login: str
    principal: str
    password_hash: str


def valid_id(value: str, *, login: bool = False) -> str | None:
    """Why ``value`` cannot be a login (``login=True``) or principal, or ``None`` if it can. Pure.

    Ids are recorded on audit events and shown to reviewers, so they are
    printable, without white space, and at most 200 characters.
    """
    if not value:
        return "it is empty"
    if len(value) > _MAX_ID_CHARS:
        return f"it is longer than {_MAX_ID_CHARS} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return "it contains white space or control characters"
    if login and ":" in value:
        return "a login may not contain ':' (HTTP Basic separates login and password with it)"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: scrypt needs 128·r·n bytes (plus a little); the default limit
    # (32 MiB) refuses exactly the default cost.
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n + 2**20, dklen=_KEY_BYTES
    )


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = 8, p: int = 1) -> str:
    """Hash ``password`` with scrypt and a fresh 16-byte salt.

    Args:
        password: the password (UTF-8 encoded before hashing).
        n: CPU/memory cost, a power of two from 2**10 to 2**20 (memory 128·r·n bytes).
        r: block size.
        p: parallelism.

    Returns:
        ``scrypt$N$r$p$SALT$KEY``, salt and key in base64.

    Raises:
        ValueError: an empty password, or cost parameters out of range.
    """
    if not password:
        raise ValueError("the password is empty")
    if n < MIN_N or n > MAX_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError(f"scrypt parameters out of range: n={n} r={r} p={p}")
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p))}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    if n < MIN_N or n > MAX_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        return None
    if len(salt) < 8 or len(key) < 16:
        return None
    return n, r, p, salt, key


_DUMMY: Final = f"{SCHEME}${DEFAULT_N}$8$1${_b64(bytes(_SALT_BYTES))}${_b64(bytes(_KEY_BYTES))}"
"""Checked against when the login is unknown, so that answering takes as long either way."""


def verify_password(password: str, encoded: str | None) -> bool:
    """Whether ``password`` matches ``encoded`` (from :func:`hash_password`). Constant-time compare.

    ``encoded=None`` (an unknown login) still costs one scrypt run, so the
    time taken does not reveal which logins exist. Returns False for a
    malformed hash.
    """
    parsed = _parse_hash(encoded if encoded is not None else _DUMMY)
    if parsed is None:
        return False
    n, r, p, salt, key = parsed
    candidate = _scrypt(password, salt, n, r, p)
    return hmac.compare_digest(candidate[: len(key)], key) and encoded is not None


def parse_users(content: str, *, source: str = "users file") -> dict[str, UserRecord]:
    """Parse a users file's text into ``{login: record}``.

    Raises:
        DefinitionError: a malformed line (named by number), a duplicate
            login, or two logins sharing one principal (each approval must
            name one person, and four-eyes counts principals).
    """
    users: dict[str, UserRecord] = {}
    owners: dict[str, str] = {}
    for number, raw in enumerate(content.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source}: line {number}"
        if len(fields) != 3:
            raise DefinitionError(f"{where}: expected 'LOGIN PRINCIPAL HASH', found {len(fields)} fields")
        login, principal, encoded = fields
        for label, value, is_login in (("login", login, True), ("principal", principal, False)):
            problem = valid_id(value, login=is_login)
            if problem is not None:
                raise DefinitionError(f"{where}: bad {label}: {problem}")
        if _parse_hash(encoded) is None:
            raise DefinitionError(f"{where}: the hash is not 'scrypt$N$r$p$SALT$KEY' with sane parameters")
        if login in users:
            raise DefinitionError(f"{where}: login {login!r} appears twice")
        if principal in owners:
            raise DefinitionError(f"{where}: principal {principal!r} already belongs to login {owners[principal]!r}")
        users[login] = UserRecord(login, principal, encoded)
        owners[principal] = login
    return users


def read_users(path: str | os.PathLike[str]) -> dict[str, UserRecord]:
    """Read and parse a users file.

    Raises:
        DefinitionError: the file cannot be read, is writable by other users
            (anyone who can edit it can approve as anyone), or is malformed.
    """
    where = os.fspath(path)
    try:
        info = os.stat(where)
        content = Path(where).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{where}: cannot read users file: {exc}") from exc
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DefinitionError(f"{where}: users file is writable by group or others; chmod 600 it")
    return parse_users(content, source=where)


def add_user(path: str | os.PathLike[str], login: str, principal: str, password: str, *, n: int = DEFAULT_N) -> None:
    """Add ``login`` to the users file (replacing an existing entry), creating the file with mode 600.

    Rewrites the file beside itself and renames it, so a reader never sees
    half a file. Comments and other lines are kept.

    Raises:
        DefinitionError: a bad login or principal, a principal that belongs
            to another login, or a file that cannot be read or written.
        ValueError: an empty password.
    """
    for label, value, is_login in (("login", login, True), ("principal", principal, False)):
        problem = valid_id(value, login=is_login)
        if problem is not None:
            raise DefinitionError(f"bad {label} {value!r}: {problem}")
    target = Path(path)
    existing = target.read_text(encoding="utf-8") if target.exists() else ""
    users = parse_users(existing, source=os.fspath(target))
    owner = next((u.login for u in users.values() if u.principal == principal and u.login != login), None)
    if owner is not None:
        raise DefinitionError(f"principal {principal!r} already belongs to login {owner!r}")
    entry = f"{login} {principal} {hash_password(password, n=n)}"
    lines = [ln for ln in existing.splitlines() if not (ln.split() and ln.split()[0] == login)]
    if not existing:
        lines.append("# statecraft web users: LOGIN PRINCIPAL HASH (python -m statecraft.web.users add)")
    lines.append(entry)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise DefinitionError(f"{target}: cannot write users file: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Manage the users file of `statecraft serve --users FILE`.

    \b
    Example:
      python -m statecraft.web.users add users.txt cfo --principal user:cfo
    """


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("login")
@click.option("--principal", help="Actor id recorded on this user's decisions (default: the login).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin instead of prompting.")
def add(file: str, login: str, principal: str | None, password_stdin: bool) -> None:
    """Add LOGIN to FILE (or replace its password), prompting for the password.

    \b
    Example:
      python -m statecraft.web.users add users.txt alice --principal alice@example.com
    """
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {login}: ")
        if getpass.getpass("again: ") != password:
            raise click.ClickException("the passwords differ; nothing written")
    try:
        add_user(file, login, principal or login, password)
    except (StatecraftError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{file}: {login} → {principal or login}", err=True)


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    cli()
