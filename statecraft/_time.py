"""UTC timestamps in the one stored format: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

Fixed width so that stored times sort correctly as text (AUDIT.md; NIST SP
800-53 AU-8 asks for UTC or an explicit offset).
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_utc", "parse_utc", "utc_now"]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC. The engine's default clock."""
    return datetime.now(UTC)


def format_utc(moment: datetime) -> str:
    """Format an aware datetime as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (27 characters).

    Raises:
        ValueError: ``moment`` is naive (has no offset): its instant is unknown.
    """
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"naive datetime {moment!r}: give a timezone-aware time")
        moment = moment.astimezone(UTC)
    # %-formatting rather than strftime (a third of the cost, on every
    # transition; an f-string is twice as slow), and four-digit years even
    # before 1000, which strftime's %Y does not give.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond,
    )


def parse_utc(text: str) -> datetime:
    """Parse ISO-8601 with an explicit offset (``Z`` or ``+HH:MM``) into aware UTC.

    Raises:
        ValueError: the text is not ISO-8601 or carries no offset.
    """
    value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; write e.g. {text}Z or {text}+00:00")
    return value.astimezone(UTC)
