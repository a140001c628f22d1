"""Strict validation of what users send (a batch request, a range of dates, a source name); pure (no database), so
unit tests cover every rule. The source's existence is the one check that needs the database (daemon.ops).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from typing import Any

from datesync.daemon.ops.problems import FieldError, Msg, OperationError, problem, shown

ALLOWED_FIELDS = ("start_date", "end_date", "force", "source", "dry_run", "with_upstream", "cascade")
# Exactly YYYY-MM-DD in ASCII digits (`\d` would also take other scripts' digits).
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# What datesync.source.name accepts; anything else cannot name a configured source.
SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# No daily source reaches further back; and the driver sends 0001-01-01 as -infinity, which breaks date arithmetic.
MIN_DATE = datetime.date(1000, 1, 1)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchRequest:
    """A valid request for a batch (its source still to be checked against datesync.source)."""

    start_date: datetime.date
    end_date: datetime.date
    force: bool = False
    source: str = "default"
    dry_run: bool = False
    with_upstream: bool = False  # request the dates of the sources this one waits for too
    cascade: bool = False  # re-run the dates of the sources built on this one after it (forced)

    @property
    def days(self) -> int:
        return (self.end_date - self.start_date).days + 1


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What a request is checked against: today in the configured zone and the largest range."""

    today: datetime.date
    zone: str
    max_range_days: int


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 naming `body`. NaN/Infinity and duplicate keys are refused."""
    if not raw.strip():
        raise OperationError(400, [problem("body", "body_empty")])
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OperationError(400, [problem("body", "body_not_utf8")]) from None
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(decoded, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise OperationError(400, [problem("body", "body_invalid_json", line=exc.lineno, column=exc.colno)]) from None
    except (ValueError, RecursionError):  # NaN, a 5000-digit number, [[[[...]]]] nested thousands deep
        raise OperationError(400, [problem("body", "body_unreadable_json")]) from None
    if not isinstance(value, dict):
        raise OperationError(400, [problem("body", "body_not_object", kind=_json_kind(value))])
    if duplicates:
        raise OperationError(422, [problem(shown(d), "field_duplicate", field=shown(d))
                                   for d in dict.fromkeys(duplicates)])
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def parse_date(field: str, value: object) -> datetime.date | FieldError:
    """A date given exactly as YYYY-MM-DD, or the problem with it."""
    if value is None:
        return problem(field, "field_required", field=field)
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return problem(field, "date_format", field=field)
    try:
        parsed = datetime.date.fromisoformat(value)
    except ValueError:
        return problem(field, "date_impossible", field=field, value=value)
    if parsed < MIN_DATE:
        return problem(field, "date_too_early", field=field, min=MIN_DATE.isoformat())
    return parsed


def _boolean(body: dict[str, Any], field: str, errors: list[FieldError]) -> bool:
    value = body.get(field, False)
    if type(value) is not bool:  # not 0/1, not "true", not null
        errors.append(problem(field, "field_boolean", field=field))
        return False
    return value


def _source(body: dict[str, Any], errors: list[FieldError]) -> str:
    value = body.get("source", "default")
    if not isinstance(value, str):
        errors.append(problem("source", "source_type"))
        return "default"
    if not SOURCE_NAME.fullmatch(value):
        errors.append(problem("source", "source_unknown", value=shown(value)))
    return value


def validate_batch(body: dict[str, Any], limits: Limits) -> BatchRequest:
    """A BatchRequest, or a 422 listing every problem, each naming its field."""
    errors = [problem(shown(k), "field_unknown", field=shown(k), allowed=", ".join(ALLOWED_FIELDS))
              for k in body if k not in ALLOWED_FIELDS]
    start = parse_date("start_date", body.get("start_date"))
    end = parse_date("end_date", body.get("end_date"))
    errors += [d for d in (start, end) if isinstance(d, FieldError)]
    force = _boolean(body, "force", errors)
    dry_run = _boolean(body, "dry_run", errors)
    with_upstream = _boolean(body, "with_upstream", errors)
    cascade = _boolean(body, "cascade", errors)
    source = _source(body, errors)
    if isinstance(start, datetime.date) and isinstance(end, datetime.date):
        errors += _range_problems(start, end, limits)
    if errors:
        raise OperationError(422, errors)
    assert isinstance(start, datetime.date) and isinstance(end, datetime.date)
    return BatchRequest(start, end, force, source, dry_run, with_upstream, cascade)


def _range_problems(start: datetime.date, end: datetime.date, limits: Limits) -> list[FieldError]:
    # Same order and wording as datesync.batch_validate().
    if start > end:
        return [problem("start_date", "start_after_end")]
    found = []
    days = (end - start).days + 1
    if days > limits.max_range_days:
        found.append(problem("end_date", "range_too_long", days=days, limit=limits.max_range_days))
    if end > limits.today:
        found.append(problem("end_date", "date_future", value=end.isoformat(), today=limits.today.isoformat(),
                             zone=limits.zone))
    return found


def idempotency_key(header: str | None) -> str | None:
    """The Idempotency-Key header, checked; None when absent."""
    if header is None:
        return None
    key = header.strip()
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise OperationError(422, [FieldError("Idempotency-Key", Msg("idempotency_key"))])
    return key


def check_source(value: str) -> FieldError | None:
    """The problem with a source name that no source can have, or None."""
    return None if SOURCE_NAME.fullmatch(value) else problem("source", "source_unknown", value=shown(value))


def span_problems(first: datetime.date | None, last: datetime.date | None, limits: Limits, *,
                  past_only: bool) -> list[FieldError]:
    """What is wrong with a `from`..`to` range of dates to read: reversed, and (with `past_only`, for ranges that
    may become batches) reaching past today or longer than a batch may be."""
    if first is not None and last is not None and first > last:
        return [problem("from", "param_from_after_to")]
    found = []
    if past_only and last is not None and last > limits.today:
        found.append(problem("to", "range_future", field="to", value=last.isoformat(),
                             today=limits.today.isoformat(), zone=limits.zone))
    elif past_only and first is not None and last is not None and (last - first).days + 1 > limits.max_range_days:
        found.append(problem("to", "range_too_long", days=(last - first).days + 1, limit=limits.max_range_days))
    return found
