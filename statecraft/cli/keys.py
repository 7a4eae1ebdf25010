"""``statecraft keys …``: approvers' signing keys and the keyring that says whose key is whose.

Thin like the rest of the CLI: parse, call :mod:`statecraft.signing`,
render. The flow (docs/audit.md, "Signed approvals"): an approver runs
``keys init`` once and hands the public entry it prints to whoever keeps
the keyring, who checks it and runs ``keys add``; ``approve --sign-key``
signs with the private key; the engine and ``audit verify --keyring``
check signatures against the keyring. Errors are our own (``KeyringError``,
``InvalidActorId``), so the main group prints them as one line, exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..render import cell
from .common import emit, err_console, table

if TYPE_CHECKING:
    from ..signing import KeyringEntry

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Signing keys for approvals, and the keyring binding them to approver ids.

    \b
    Example:
      statecraft keys init --by alice@example.com --key ~/.statecraft/alice.key > alice.pub
      statecraft keys add alice.pub --keyring /srv/statecraft/keyring
      statecraft keys list --keyring /srv/statecraft/keyring
    """


@keys.command(name="init")
@click.option("--by", required=True, help="The approver id the key belongs to (normalised).")
@click.option("--key", "key_path", required=True, metavar="FILE",
              help="Where to write the private key (mode 0600; must not exist).")
@click.option("--keyring", metavar="DIR",
              help="Also add the public entry to this keyring folder (else it is printed on stdout).")
@click.option("--json", "as_json", is_flag=True, help="Print the public entry as JSON.")
def keys_init(by: str, key_path: str, keyring: str | None, as_json: bool) -> None:
    """Make an Ed25519 signing key for approver --by; print its public keyring entry.

    Keep the private key file to yourself (like an SSH key); give the public
    entry to whoever keeps the keyring (`keys add`).

    \b
    Example:
      statecraft keys init --by alice@example.com --key ~/.statecraft/alice.key > alice.pub
    """
    from ..signing import SigningKey, add_to_keyring

    key = SigningKey.generate(by)
    key.save(key_path)
    entry = key.public_entry()
    err_console().print(cell(f"private key {key.key_id} for {key.actor_id} → {key_path}"))
    if keyring is not None:
        written = add_to_keyring(entry, keyring)
        err_console().print(cell(f"public entry → {written}"))
    if as_json:
        click.echo(json.dumps(_entry_json(entry, None), ensure_ascii=False))
    elif keyring is None:
        click.echo(entry.text(), nl=False)


@keys.command(name="add")
@click.argument("entry_file", metavar="FILE")
@click.option("--keyring", required=True, metavar="DIR", envvar="STATECRAFT_KEYRING",
              help="The keyring folder (env: STATECRAFT_KEYRING); created if missing.")
def keys_add(entry_file: str, keyring: str) -> None:
    """Check a public entry (from `keys init`) and add it to the keyring as KEY_ID.pub.

    The entry's proof (the key's signature over its own entry) must verify;
    an existing entry is never overwritten.

    \b
    Example:
      statecraft keys add alice.pub --keyring /srv/statecraft/keyring
    """
    from ..signing import KeyringEntry, add_to_keyring

    path = Path(entry_file)
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"cannot read {entry_file}: {exc}") from exc
    entry = KeyringEntry.parse(content, source=entry_file)
    written = add_to_keyring(entry, keyring)
    err_console().print(cell(f"key {entry.key_id} of {entry.actor_id} → {written}"))


@keys.command(name="list")
@click.option("--keyring", required=True, metavar="DIR", envvar="STATECRAFT_KEYRING",
              help="The keyring folder (env: STATECRAFT_KEYRING).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def keys_list(keyring: str, as_json: bool) -> None:
    """List the keyring's keys (every entry's proof is checked first).

    \b
    Example:
      statecraft keys list --keyring /srv/statecraft/keyring --json
    """
    from ..signing import Keyring

    ring = Keyring.load(keyring)
    entries = sorted(ring.entries.values(), key=lambda e: (e.actor_id, e.created_at))
    if as_json:
        for entry in entries:
            click.echo(json.dumps(_entry_json(entry, keyring), ensure_ascii=False))
        return
    rows = table("actor", "key id", "created")
    for entry in entries:
        # Data, never markup or terminal control (statecraft/render.py).
        rows.add_row(cell(entry.actor_id), cell(entry.key_id), cell(entry.created_at))
    emit(rows)


def _entry_json(entry: KeyringEntry, keyring: str | None) -> dict[str, str | None]:
    return {
        "actor_id": entry.actor_id,
        "key_id": entry.key_id,
        "public_key": entry.public_key,
        "created_at": entry.created_at,
        "keyring": keyring,
    }
