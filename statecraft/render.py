"""Text a reviewer reads on a terminal, made safe: the ledger holds data, never instructions.

Anything shown in the CLI may come from someone other than the reader: an
actor id typed with ``--by``, a comment, a reason, an agent's output, a
step or machine name from a machine file. On a terminal such text could
forge what the reviewer sees:

- control characters: ``\\r`` and ``ESC [2K`` erase the line printed so far
  (``mallory\\r\\e[2Kalice`` shows "alice"), other escape sequences move the
  cursor, recolour, retitle the window or make hyperlinks;
- Unicode format characters: bidi overrides (U+202E) reverse what follows,
  zero-width characters hide differences between ids;
- rich console markup: ``[link=…]``, ``[/]`` (which even crashes rendering
  with a ``MarkupError``), ``[red]``.

So every human-facing render goes through this module: :func:`safe` shows
such characters as visible escapes (``\\x1b``, ``\\u202e``), and
:func:`cell` wraps data in a rich ``Text`` (never parsed for markup).
``--json`` output stays exact JSON (its own escaping is the consumer's
contract); ``--csv`` cells go through :func:`csv_cell`, which defuses
spreadsheet formulas (OWASP "CSV injection": a cell starting with
``= + - @``, tab or carriage return is prefixed with ``'``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["cell", "csv_cell", "safe"]

# C0 and C1 controls (newline and tab included: one record is one line),
# DEL, and the Unicode format/separator characters that reorder, hide or
# break text: zero-width and directional marks, line/paragraph separators,
# bidi embeddings, overrides and isolates, invisible operators, BOM,
# interlinear annotation characters.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: Any) -> str:
    """``value`` as one line of text whose every character shows as itself.

    Control and invisible/bidi format characters become visible escapes
    (``\\x1b``, ``\\u202e``); everything else is unchanged. ``None`` is "".
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def cell(value: Any, style: str | None = None) -> Text:
    """Data for a rich table or console line: :func:`safe` text, never parsed as markup."""
    from rich.text import Text  # here, so that importing this module costs no rich

    return Text(safe(value), style=style or "")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV field that a spreadsheet cannot evaluate: text starting like a formula gets a ``'``.

    Numbers and ``None`` pass through unchanged (a negative number is data,
    and the columns that hold numbers are integers, never text).
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
