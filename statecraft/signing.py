"""Signed approvals: an approver's Ed25519 key signs what they approved, and a keyring says whose key it is.

Why: ``actor_id`` is whatever the approver typed after ``--by``; the OS
account beside it proves only which account ran the command. A signature
made with a key only the approver holds, over exactly what was approved,
is evidence a reviewer can check months later without trusting the
database, the host or the person who ran the command (NIST SP 800-53
AU-10, non-repudiation).

The pieces:

- **Signing key** (``statecraft keys init``): an Ed25519 private key in a
  text file readable only by its owner (mode 0600), with the actor id it
  belongs to. Like an SSH key without a passphrase: protect the file.
- **Keyring**: a folder of public entries, one file per key
  (``KEY_ID.pub``), each binding a public key to one actor id. An entry
  carries a *proof*: the key's own signature over the entry, so an entry
  cannot be assembled from someone else's public key and another id. The
  keyring is the trust root: keep it where changes are reviewed and
  retained (version control, WORM storage), like anchors.
- **Approval signature**: over the message
  ``b"statecraft.approval.v1\\x00" + JCS({"approver_id", "decision":
  "approve", "proposal_digest", "run_id"})`` (RFC 8785). The proposal
  digest covers the run, the state at the gate, the step, where the run
  resumes, the reason and the request's position, so a signature cannot
  be replayed for another run, proposal, request or approver. It is
  recorded in the ``approval.granted`` event's payload (``signature``: the
  scheme, key id, public key and value, base64).

Checks: the engine refuses, writing nothing, a signature that does not
verify over the pending request and the approver's normalised id; with a
keyring, also one whose key is not in it or is bound to another actor id;
and under ``ApprovalPolicy(require_signature=True)`` an unsigned approval,
or any approval when it has no keyring to check against
(``Engine(keyring=DIR)``, ``--keyring``, ``$STATECRAFT_KEYRING``).
``statecraft audit verify --keyring DIR`` checks every recorded signature
again and names the first bad one (statecraft/audit/signatures.py).

``cryptography`` is imported only when a key or signature is used:
``import statecraft`` stays fast.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import rfc8785

from ._time import format_utc, utc_now
from .errors import InvalidActorId, KeyringError
from .identity import normalize_actor

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "SCHEME",
    "ApprovalSignature",
    "Keyring",
    "KeyringEntry",
    "SigningKey",
    "add_to_keyring",
    "approval_message",
    "key_id_of",
    "signature_problem",
]

SCHEME: Final = "ed25519/statecraft.approval.v1"
"""The one signature scheme: Ed25519 over :func:`approval_message`."""

_KEY_HEADER: Final = "statecraft-signing-key v1"
_ENTRY_HEADER: Final = "statecraft-public-key v1"
_ENTRY_FIELDS: Final = ("actor_id", "key_id", "public_key", "created_at")


def approval_message(*, run_id: str, proposal_digest: str, approver_id: str) -> bytes:
    """The bytes an approval signature signs. Pure.

    ``b"statecraft.approval.v1\\x00" + JCS({"approver_id", "decision",
    "proposal_digest", "run_id"})``, ``decision`` being ``"approve"``.
    """
    body = rfc8785.dumps({
        "approver_id": approver_id,
        "decision": "approve",
        "proposal_digest": proposal_digest,
        "run_id": run_id,
    })
    return b"statecraft.approval.v1\x00" + body


def key_id_of(public_key: bytes) -> str:
    """A key's id: ``ed25519:`` and the first 32 hex digits of the SHA-256 of its 32 raw bytes. Pure."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"{what} is not base64") from exc
    if len(raw) != size:
        raise ValueError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


def _verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class ApprovalSignature:
    """An approval's signature, as passed to ``Engine.approve(signature=...)`` and recorded.

    Attributes:
        key_id: the signing key's id (:func:`key_id_of`).
        public_key: the 32-byte Ed25519 public key, base64.
        value: the 64-byte signature over :func:`approval_message`, base64.
        scheme: :data:`SCHEME`.
    """

    key_id: str
    public_key: str
    value: str
    scheme: str = SCHEME

    def describe(self) -> dict[str, Any]:
        """JSON form, as recorded in the ``approval.granted`` payload (``signature``)."""
        return {"scheme": self.scheme, "key_id": self.key_id, "public_key": self.public_key, "value": self.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApprovalSignature:
        """Inverse of :meth:`describe`.

        Raises:
            ValueError: a field is missing or not a string.
        """
        fields = {k: data.get(k) for k in ("scheme", "key_id", "public_key", "value")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise ValueError("a signature needs string fields scheme, key_id, public_key and value")
        return cls(key_id=fields["key_id"], public_key=fields["public_key"],  # type: ignore[arg-type]
                   value=fields["value"], scheme=fields["scheme"])  # type: ignore[arg-type]


def signature_problem(
    signature: ApprovalSignature, *, run_id: str, proposal_digest: str, approver_id: str
) -> str | None:
    """Why ``signature`` is not a valid approval of this request by this approver, or ``None``.

    Checks the scheme, that ``key_id`` names ``public_key``, and the Ed25519
    signature over :func:`approval_message`. Says nothing about *whose* key
    it is: that is :meth:`Keyring.binding_problem`.
    """
    if signature.scheme != SCHEME:
        return f"unknown signature scheme {signature.scheme!r} (expected {SCHEME})"
    try:
        public = _unb64(signature.public_key, "the public key", 32)
        value = _unb64(signature.value, "the signature", 64)
    except ValueError as exc:
        return str(exc)
    if key_id_of(public) != signature.key_id:
        return f"key id {signature.key_id} does not name the public key given"
    message = approval_message(run_id=run_id, proposal_digest=proposal_digest, approver_id=approver_id)
    if not _verifies(public, value, message):
        return (
            f"the signature by key {signature.key_id} does not verify for run {run_id}, "
            f"proposal {proposal_digest[:12]}… and approver {approver_id}"
        )
    return None


@dataclass(frozen=True)
class KeyringEntry:
    """One public key bound to one actor id; a file ``KEY_ID.pub`` in a keyring folder.

    The file is UTF-8 text, ``key value`` lines::

        statecraft-public-key v1
        actor_id alice@example.com
        key_id ed25519:3f2a…(32 hex)
        public_key <32 bytes, base64>
        created_at 2025-06-30T12:00:00.000000Z
        proof <64 bytes, base64>

    ``proof`` is the key's own Ed25519 signature over
    ``b"statecraft.key.v1\\x00" + JCS({actor_id, key_id, public_key, created_at})``.

    Attributes:
        actor_id: the normalised actor id the key belongs to.
        key_id: :func:`key_id_of` the public key.
        public_key: 32 bytes, base64.
        created_at: when the key was made (UTC).
        proof: the self-signature, base64.
    """

    actor_id: str
    key_id: str
    public_key: str
    created_at: str
    proof: str

    def claims(self) -> bytes:
        """The bytes ``proof`` signs."""
        return b"statecraft.key.v1\x00" + rfc8785.dumps({f: getattr(self, f) for f in _ENTRY_FIELDS})

    def text(self) -> str:
        """The file content."""
        lines = [_ENTRY_HEADER, *(f"{f} {getattr(self, f)}" for f in (*_ENTRY_FIELDS, "proof"))]
        return "\n".join(lines) + "\n"

    def problem(self) -> str | None:
        """Why the entry cannot be trusted as written (bad id, key or proof), or ``None``."""
        try:
            if normalize_actor(self.actor_id) != self.actor_id:
                return f"actor_id {self.actor_id!r} is not normalised"
            public = _unb64(self.public_key, "public_key", 32)
            proof = _unb64(self.proof, "proof", 64)
        except (ValueError, InvalidActorId) as exc:
            return str(exc)
        if key_id_of(public) != self.key_id:
            return f"key_id {self.key_id} does not name its public key"
        if not _verifies(public, proof, self.claims()):
            return "its proof does not verify (the entry was altered, or assembled from another key)"
        return None

    @classmethod
    def parse(cls, content: str, *, source: str | None = None) -> KeyringEntry:
        """Read an entry file's content.

        Raises:
            KeyringError: not an entry, a missing or repeated field.
        """
        lines = content.splitlines()
        if not lines or lines[0].strip() != _ENTRY_HEADER:
            raise KeyringError(f"not a statecraft public key (first line must be {_ENTRY_HEADER!r})", path=source)
        values: dict[str, str] = {}
        for line in lines[1:]:
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in values:
                raise KeyringError(f"field {key!r} appears twice", path=source)
            values[key] = value.strip()
        missing = [f for f in (*_ENTRY_FIELDS, "proof") if not values.get(f)]
        if missing:
            raise KeyringError(f"missing field(s) {', '.join(missing)}", path=source)
        return cls(**{f: values[f] for f in (*_ENTRY_FIELDS, "proof")})


class Keyring:
    """Public keys bound to actor ids: the folder ``statecraft keys init --keyring DIR`` writes to.

    Args:
        entries: the entries; every one must check (:meth:`KeyringEntry.problem`).
        source: where they were read from, for messages.

    Raises:
        KeyringError: an entry does not check, or two entries share a key id.
    """

    def __init__(self, entries: Iterable[KeyringEntry], *, source: str | None = None) -> None:
        self.source = source
        self.entries: dict[str, KeyringEntry] = {}
        for entry in entries:
            problem = entry.problem()
            if problem is not None:
                raise KeyringError(f"key {entry.key_id}: {problem}", path=source)
            if entry.key_id in self.entries:
                raise KeyringError(f"key {entry.key_id} appears twice", path=source)
            self.entries[entry.key_id] = entry

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Keyring:
        """Read every ``*.pub`` file of ``folder``. Read-only.

        Raises:
            KeyringError: no such folder, or a file that is not a valid entry.
        """
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise KeyringError("no such keyring folder", path=str(path))
        entries = []
        for file in sorted(path.glob("*.pub")):
            try:
                content = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyringError(f"cannot read: {exc}", path=str(file)) from exc
            entries.append(KeyringEntry.parse(content, source=str(file)))
        return cls(entries, source=str(path))

    def binding_problem(self, signature: ApprovalSignature, *, approver_id: str) -> str | None:
        """Why this keyring does not bind ``signature``'s key to ``approver_id``, or ``None``. Pure."""
        entry = self.entries.get(signature.key_id)
        where = f" in keyring {self.source}" if self.source else ""
        if entry is None:
            return f"key {signature.key_id} is not{where}"
        if entry.public_key != signature.public_key:
            return f"key {signature.key_id}{where} has another public key than the one recorded"
        if entry.actor_id != approver_id:
            return f"key {signature.key_id} belongs to {entry.actor_id}, not {approver_id}"
        return None


class SigningKey:
    """An approver's Ed25519 private key and the actor id it belongs to.

    The file (``statecraft keys init``) is UTF-8 text, mode 0600::

        statecraft-signing-key v1
        actor_id alice@example.com
        key_id ed25519:…
        created_at 2025-06-30T12:00:00.000000Z
        -----BEGIN PRIVATE KEY-----
        … (PKCS #8, unencrypted)
        -----END PRIVATE KEY-----
    """

    def __init__(self, private: Ed25519PrivateKey, *, actor_id: str, created_at: str) -> None:
        from cryptography.hazmat.primitives import serialization

        self._private = private
        self.actor_id = normalize_actor(actor_id)
        self.created_at = created_at
        self.public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id_of(self.public_raw)

    @classmethod
    def generate(cls, actor_id: str, *, created_at: str | None = None) -> SigningKey:
        """A new random key for ``actor_id`` (normalised).

        Raises:
            InvalidActorId: ``actor_id`` is not a valid actor id.
        """
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate(), actor_id=actor_id,
                   created_at=created_at or format_utc(utc_now()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a key file.

        Raises:
            KeyringError: missing, unreadable, or not a statecraft signing key.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        file = Path(path).expanduser()
        try:
            content = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyringError(f"cannot read signing key: {exc}", path=str(file)) from exc
        head, _, pem = content.partition("-----BEGIN PRIVATE KEY-----")
        lines = head.splitlines()
        if not lines or lines[0].strip() != _KEY_HEADER or not pem:
            raise KeyringError(f"not a statecraft signing key (first line must be {_KEY_HEADER!r})", path=str(file))
        values = dict(line.partition(" ")[::2] for line in lines[1:] if line.strip())
        try:
            private = serialization.load_pem_private_key(
                ("-----BEGIN PRIVATE KEY-----" + pem).encode("ascii"), password=None
            )
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            raise KeyringError(f"the private key cannot be read: {exc}", path=str(file)) from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyringError("the private key is not an Ed25519 key", path=str(file))
        key = cls(private, actor_id=values.get("actor_id", "").strip(),
                  created_at=values.get("created_at", "").strip())
        if values.get("key_id", "").strip() != key.key_id:
            raise KeyringError("key_id does not match the private key", path=str(file))
        return key

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file, readable only by its owner (0600). Never overwrites.

        Raises:
            KeyringError: the file exists or cannot be written.
        """
        from cryptography.hazmat.primitives import serialization

        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        content = (
            f"{_KEY_HEADER}\nactor_id {self.actor_id}\nkey_id {self.key_id}\n"
            f"created_at {self.created_at}\n{pem}"
        )
        _write_new(Path(path).expanduser(), content, mode=0o600)

    def public_entry(self) -> KeyringEntry:
        """This key's keyring entry, with its proof."""
        unsigned = KeyringEntry(self.actor_id, self.key_id, _b64(self.public_raw), self.created_at, proof="")
        return KeyringEntry(
            self.actor_id, self.key_id, unsigned.public_key, self.created_at,
            proof=_b64(self._private.sign(unsigned.claims())),
        )

    def sign_approval(self, *, run_id: str, proposal_digest: str, approver_id: str | None = None) -> ApprovalSignature:
        """Sign the approval of ``proposal_digest`` on ``run_id`` by this key's actor.

        Raises:
            KeyringError: ``approver_id`` (normalised) is not this key's actor id.
        """
        approver = self.actor_id if approver_id is None else normalize_actor(approver_id)
        if approver != self.actor_id:
            raise KeyringError(f"this key belongs to {self.actor_id}, not {approver}")
        message = approval_message(run_id=run_id, proposal_digest=proposal_digest, approver_id=approver)
        return ApprovalSignature(
            key_id=self.key_id, public_key=_b64(self.public_raw), value=_b64(self._private.sign(message))
        )


def add_to_keyring(entry: KeyringEntry, folder: str | os.PathLike[str]) -> Path:
    """Write ``entry`` into the keyring ``folder`` as ``KEY_ID.pub`` (created if needed). Never overwrites.

    Returns:
        The file written.

    Raises:
        KeyringError: the entry does not check, or the file exists.
    """
    problem = entry.problem()
    if problem is not None:
        raise KeyringError(f"key {entry.key_id}: {problem}")
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    target = path / (entry.key_id.replace(":", "-") + ".pub")
    _write_new(target, entry.text(), mode=0o644)
    return target


def _write_new(path: Path, content: str, *, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise KeyringError("already exists; not overwritten", path=str(path)) from exc
    except OSError as exc:
        raise KeyringError(f"cannot write: {exc}", path=str(path)) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(content)
