"""The one boundary between what a handler produces and what leaves the daemon: every exception text, traceback,
progress note and row count passes through here before it reaches PostgreSQL, a log line or a client.

A handler's text is arbitrary: PostgreSQL refuses NUL in `text` and lone surrogates in any encoding (one such
error wedged a daemon for good, issue 15), control characters rewrite a terminal, a message may be megabytes, and
an upstream may echo our credentials back. What comes out is valid UTF-8, printable, bounded and scrubbed.
"""

from __future__ import annotations

import re
import traceback

from datesync.daemon.logs import scrub_text

TEXT_LIMIT = 4096  # UTF-8 bytes of a stored error, with the marker
NOTE_LIMIT = 1024  # a progress note
TRACEBACK_LIMIT = 16384  # a traceback in the log
# Only this many characters are looked at: scrubbing a 100 MB message would stall the event loop, and the cut
# comes after the scrub, so no secret is half kept at the cut.
SCAN_LIMIT = 65536
BIGINT_MAX = 2**63 - 1  # rows_synced is a bigint
PROGRESS_MAX = 2**53  # exact in JSON readers (the page's JavaScript)

_DROPPED = re.compile("\x00")  # NUL: PostgreSQL's text cannot hold it
# Lone surrogates (unencodable in UTF-8), C0 controls but tab and newline, DEL and C1 controls.
_REPLACED = re.compile("[\ud800-\udfff\x01-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` made safe to store, log and show: no NUL, no unencodable or control characters, no secret, at most
    `limit` UTF-8 bytes (a longer text is cut and says how much was cut)."""
    scanned = text[:SCAN_LIMIT]
    scanned = _REPLACED.sub("\ufffd", _DROPPED.sub("", scanned))
    scanned = scrub_text(scanned)
    data = scanned.encode()
    if len(data) <= limit and len(text) <= SCAN_LIMIT:
        return scanned
    kept = data[: max(limit - 48, 0)].decode("utf-8", "ignore")
    return f"{kept}… [{len(text) - len(kept)} characters cut]"


def error_text(exc: BaseException, limit: int = TEXT_LIMIT) -> str:
    """One line for the task table: the exception's type and message, no traceback (that goes to the log)."""
    try:
        message = str(exc).strip()
    except Exception:  # a handler's exception whose __str__ raises is still an error to record
        message = ""
    if not message:
        try:
            message = repr(exc)
        except Exception:
            message = "(an exception that cannot be shown)"
    return clean_text(f"{type(exc).__name__}: {message}", limit)


def traceback_text(exc: BaseException) -> str:
    """The traceback for a log line's `exception` field, cleaned like any other text of the handler's."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = error_text(exc)
    return clean_text(text.rstrip(), TRACEBACK_LIMIT)


def row_count(result: object) -> int | None:
    """A handler's return value as rows synced; TypeError or ValueError (the attempt fails) when it is none."""
    if result is None:
        return None
    if isinstance(result, bool) or not isinstance(result, int):
        raise TypeError(f"the handler returned {clean_text(type(result).__name__, 200)}; expected an int or None")
    value = int.__int__(result)  # an int subclass's own __int__ is the handler's code: not called
    if not 0 <= value <= BIGINT_MAX:
        raise ValueError(f"the handler returned {_number(value)} rows; expected 0 to {BIGINT_MAX} or None")
    return value


def progress_value(value: object) -> int | None:
    """`done` or `total` of ctx.progress as a JSON-safe count, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    number = int.__int__(value)
    return number if 0 <= number <= PROGRESS_MAX else None


def progress_note(note: object) -> str | None:
    """A progress note as cleaned text (a non-text note is shown as its type)."""
    if note is None:
        return None
    if not isinstance(note, str):
        note = f"({type(note).__name__})"
    return clean_text(note, NOTE_LIMIT)


def _number(value: int) -> str:
    # str() of an int over 4,300 digits raises ValueError in Python 3.11+.
    return str(value) if value.bit_length() < 1000 else f"a {value.bit_length()}-bit number"
