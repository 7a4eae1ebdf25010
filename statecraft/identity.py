"""Actor ids: one normaliser for every human-facing request, and what a process can say about itself.

Why a normaliser at all: approval policies compare ids (no self-approval,
four-eyes, excluded approvers). Compared as typed, ``Clerk@example.com``,
``clerk@example.com `` and ``clerk@example.com`` are three people, and so is
a spelling with a zero-width space, a NUL byte or a Cyrillic ``с`` — each
one a way for one person to approve their own request (issue #8). So every
request that names an actor (``start``/``create``/``start_created``,
``approve``, ``reject``, ``cancel``, ``retry``, ``audit redact``) passes its
``by`` through :func:`normalize_actor` exactly once, before any check, and
the ledger stores the result.

The rules, in order (docs/audit.md, "Who acted"):

1. **Refused characters.** Control characters (``Cc``: NUL, newline, tab,
   ESC …), format characters (``Cf``: zero-width space/joiner, soft hyphen,
   the bidi overrides and isolates, BOM), line and paragraph separators,
   surrogates, private-use and unassigned code points. They have no place in
   an id and are how look-alikes are built; they are refused, never stripped
   (stripping would make ``a\\u200bdmin`` silently become ``admin``).
2. **NFKC, then casefold, then NFKC** (Unicode's NFKC_Casefold, as
   Python's stdlib can compute it): full-width letters, ligatures and case
   variants become one spelling.
3. **Whitespace** is trimmed and inner runs collapse to one space.
4. **Scripts.** The letters of an id may come from one script, or combine
   Latin with one other script except Cyrillic, Greek, Armenian, Cherokee
   and Coptic (whose letters pass for Latin), or with Han and the Japanese
   or Korean scripts (after UTS #39's "moderately restrictive" profile). A
   script is read from the letter's Unicode name (``CYRILLIC SMALL LETTER
   ES``); ``clеrk@example.com`` with a Cyrillic ``е`` is refused.

What is stored (``actor_id``) is the normalised id. Policy checks that
*refuse* (self-approval, an excluded approver, approving twice) compare a
further-folded :func:`policy_key`, so that spellings a human reads as the
same person count as the same person:

- a ``+tag`` is folded away: ``clerk+2@example.com`` and ``user:clerk+x``
  are ``clerk@example.com`` and ``user:clerk`` for these checks (mail
  systems deliver sub-addresses to the same mailbox);
- a whole-script look-alike (``сlеrk``, all Cyrillic, passes rule 4) and
  letters with accents map to a Latin skeleton (a built-in subset of UTS
  #39's confusables: Cyrillic, Greek and Armenian letters that look Latin,
  ``0``/``o``, ``1``/``l``, ``rn``/``m`` …).

Folding more in a refusal only ever refuses more. Membership of an
approver *group* (an allow-list) is the opposite direction, so it compares
normalised ids exactly: a look-alike of a group member is not a member.

What the process can say about itself (:func:`process_identity`) is
recorded beside the claimed id on every event a request writes: the OS
account (from the effective uid, not ``$USER``, which anyone can set) and
the host name. It proves which account on which host ran the statecraft
code that wrote the event, as far as that code can tell; it does not prove
who sat at the keyboard of a shared account, and whoever can write the
database file can write any value. docs/audit.md states this for reviewers.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

from .errors import InvalidActorId

__all__ = ["Identity", "normalize_actor", "policy_key", "process_identity"]

MAX_LENGTH: Final = 200
"""Longest accepted id, in code points after normalisation."""

_REFUSED_CATEGORIES: Final = {
    "Cc": "a control character",
    "Cf": "an invisible format character (zero-width, bidi or similar)",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}

# Scripts whose letters pass for Latin ones: never mixed with Latin.
_LATIN_LOOKALIKE_SCRIPTS: Final = frozenset({"CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC"})
# Combinations used by real writing systems (UTS #39 "moderately restrictive").
_ALLOWED_SETS: Final = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
_SCRIPT_ALIASES: Final = {
    "CJK": "HAN",
    "IDEOGRAPHIC": "HAN",
    "KATAKANA-HIRAGANA": "KATAKANA",
    "HALFWIDTH": "KATAKANA",
}

# A built-in subset of UTS #39 confusables (confusables.txt), lower case,
# mapped to the Latin letters they pass for. Used only to refuse more.
_SKELETON: Final = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "д": "d", "е": "e", "ё": "e", "з": "3", "и": "u", "й": "u",
    "і": "i", "ї": "i", "ј": "j", "к": "k", "л": "n", "м": "m", "н": "h", "о": "o", "п": "n",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ш": "w", "щ": "w", "ъ": "b", "ь": "b",
    "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ҽ": "e", "ѵ": "v", "ү": "y",
    "ɡ": "g", "ӕ": "ae",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "π": "n", "ρ": "p", "σ": "o", "ς": "c", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    "ϲ": "c", "ϳ": "j",
    # Armenian
    "ա": "w", "հ": "h", "ո": "n", "ս": "u", "օ": "o", "զ": "q", "ց": "g", "ւ": "l",
    # Latin look-alikes of other Latin letters, and digits
    # (after casefold a capital I is an i, so only these pass for an l)
    "ı": "i", "ɩ": "i", "ǀ": "l", "|": "l", "1": "l", "ɑ": "a", "0": "o",
    "ø": "o", "đ": "d", "ħ": "h", "ŀ": "l", "ł": "l", "ß": "ss",
})
_SKELETON_PAIRS: Final = (("rn", "m"), ("vv", "w"))


def normalize_actor(raw: object, *, run_id: str | None = None) -> str:
    """The one normalised spelling of an actor id; refuses ids that cannot be one.

    Pure. Idempotent: ``normalize_actor(normalize_actor(x)) == normalize_actor(x)``.

    Args:
        raw: the id as given (``--by``, ``by=``).
        run_id: named in the error, when the request is about a run.

    Returns:
        The id after NFKC_Casefold, with whitespace trimmed and collapsed.

    Raises:
        InvalidActorId: not a string; empty; longer than ``MAX_LENGTH``;
            holds a control, format (zero-width, bidi), separator,
            surrogate, private-use or unassigned character; or mixes
            scripts confusably (module docstring, rule 4).
    """
    if not isinstance(raw, str):
        raise InvalidActorId(raw, f"an actor id is a string, not {type(raw).__name__}", run_id=run_id)
    _refuse_characters(raw, run_id)
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    text = " ".join(text.split())
    if not text:
        raise InvalidActorId(raw, "a decision needs a named actor (--by ID)", run_id=run_id)
    _refuse_characters(text, run_id)  # NFKC never introduces them; cheap to be sure
    if len(text) > MAX_LENGTH:
        raise InvalidActorId(raw, f"longer than {MAX_LENGTH} characters", run_id=run_id)
    scripts = _scripts(text)
    if not _scripts_allowed(scripts):
        raise InvalidActorId(
            raw, f"it mixes scripts that look alike ({' + '.join(sorted(s.lower() for s in scripts))})",
            run_id=run_id,
        )
    return text


def policy_key(actor_id: str) -> str:
    """The id as approval policies compare it when they refuse: ``+tag`` and look-alikes folded. Pure.

    ``actor_id`` should be normalised already; an id recorded before
    normalisation existed is folded as well as it can be (casefold, trim)
    rather than refused, so old runs keep working.
    """
    try:
        text = normalize_actor(actor_id)
    except InvalidActorId:
        text = " ".join(str(actor_id).casefold().split())
    local, at, domain = text.rpartition("@") if "@" in text else (text, "", "")
    local = local.split("+", 1)[0]
    text = f"{local}{at}{domain}"
    # Accents off (NFD, drop combining marks), then look-alike letters to Latin.
    stripped = "".join(
        c for c in unicodedata.normalize("NFD", text) if not unicodedata.category(c).startswith("M")
    )
    skeleton = stripped.translate(_SKELETON)
    for pair, single in _SKELETON_PAIRS:
        skeleton = skeleton.replace(pair, single)
    return skeleton


def _refuse_characters(text: str, run_id: str | None) -> None:
    for position, char in enumerate(text):
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is not None:
            raise InvalidActorId(
                text, f"it contains {what} (U+{ord(char):04X}) at position {position}", run_id=run_id
            )


def _script(char: str) -> str | None:
    """The script of a letter, read from its Unicode name; ``None`` for non-letters."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    first = name.split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(first, first) or None


def _scripts(text: str) -> frozenset[str]:
    return frozenset(s for s in map(_script, text) if s is not None)


def _scripts_allowed(scripts: frozenset[str]) -> bool:
    if len(scripts) <= 1:
        return True
    if any(scripts <= allowed for allowed in _ALLOWED_SETS):
        return True
    # Latin plus exactly one other script that does not pass for Latin.
    others = scripts - {"LATIN"}
    return "LATIN" in scripts and len(others) == 1 and not others & _LATIN_LOOKALIKE_SCRIPTS


@dataclass(frozen=True)
class Identity:
    """What is recorded beside a claimed actor id (payload ``identity`` of the event).

    Attributes:
        os_user: the OS account the writing process ran as (from its
            effective uid; ``None`` where the platform cannot tell).
        os_uid: that account's numeric id (POSIX), else ``None``.
        host: the host name of the machine the process ran on.
        principal: the id an embedding service's ``authenticate`` hook
            vouched for (``Engine(authenticate=...)``), else ``None``.
    """

    os_user: str | None
    os_uid: int | None
    host: str | None
    principal: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON form, as recorded in the event's payload (no floats)."""
        return {
            "os_user": self.os_user,
            "os_uid": self.os_uid,
            "host": self.host,
            "principal": self.principal,
        }


@functools.lru_cache(maxsize=1)
def process_identity() -> Identity:
    """The OS account and host of this process; computed once per process.

    The account comes from the effective uid through the password database,
    not from ``$USER``/``$LOGNAME``, which the caller can set to anything.
    """
    uid: int | None = None
    user: str | None = None
    if sys.platform != "win32":
        import pwd

        uid = os.geteuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:  # a uid without a passwd entry (some containers)
            user = None
    else:  # pragma: no cover - exercised on Windows only
        import getpass

        try:
            user = getpass.getuser()
        except Exception:
            user = None
    try:
        host: str | None = socket.gethostname() or None
    except OSError:  # pragma: no cover - no host name configured
        host = None
    return Identity(os_user=user, os_uid=uid, host=host)
