"""Query-string and path parameters: parsed strictly, each problem a 422 naming the parameter."""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

from starlette.datastructures import QueryParams

from datesync.daemon.ops.problems import FieldError, OperationError, problem, shown
from datesync.daemon.ops.validation import parse_date

MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000
_BIGINT_MAX = 2**63 - 1
_WHOLE = re.compile(r"[0-9]{1,19}")


class Query:
    """Reads parameters from a query string, collecting problems instead of stopping at the first."""

    def __init__(self, params: QueryParams) -> None:
        self.params = params
        self.errors: list[FieldError] = []

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.params.get(name)
        if raw is None or raw == "":
            return default
        value = int(raw) if _WHOLE.fullmatch(raw) else None
        if value is None or not low <= value <= high:
            self.errors.append(problem(name, "param_int", field=name, low=low, high=high))
            return default
        return value

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        raw = self.params.get(name)
        if raw is None or raw == "":
            return None
        if raw not in choices:
            self.errors.append(problem(name, "param_choice", field=name, choices=", ".join(choices)))
            return None
        return raw

    def date(self, name: str) -> datetime.date | None:
        raw = self.params.get(name)
        if raw is None or raw == "":
            return None
        parsed = parse_date(name, raw)
        if isinstance(parsed, FieldError):
            self.errors.append(parsed)
            return None
        return parsed

    def text(self, name: str, pattern: re.Pattern[str]) -> str | None:
        """A free-text parameter; one that cannot match `pattern` matches nothing, so it is refused."""
        raw = self.params.get(name)
        if raw is None or raw == "":
            return None
        if not pattern.fullmatch(raw):
            self.errors.append(problem(name, "source_unknown", value=shown(raw)))
            return None
        return raw

    def page(self, default_limit: int) -> tuple[int, int]:
        return (self.integer("limit", default_limit, 1, MAX_LIMIT), self.integer("offset", 0, 0, MAX_OFFSET))

    def check(self) -> None:
        if self.errors:
            raise OperationError(422, self.errors)


def batch_id(raw: str) -> int:
    """A batch id from the path; anything that cannot be one is simply not found (404)."""
    value = int(raw) if _WHOLE.fullmatch(raw) else 0
    if not 1 <= value <= _BIGINT_MAX:
        raise OperationError(404, [problem("id", "batch_not_found", id=shown(raw))])
    return value
