"""The response envelope every API answer uses: `{"status": "success", "data": {...}}`, or for a refused
operation (daemon.ops.problems) `{"status": "error", "message": ..., "errors": [{field, message}]}` in the language
the request prefers."""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from datesync.daemon.ops.messages import Lang
from datesync.daemon.ops.problems import OperationError


def _default(value: object) -> object:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class Envelope(JSONResponse):
    """JSON with dates as ISO text, UTF-8 kept readable; text that is not valid UTF-8 (a lone surrogate
    echoed from a request) is escaped instead of failing the answer."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=_default).encode(
            "utf-8", errors="backslashreplace")


def success(data: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Envelope:
    return Envelope({"status": "success", "data": data}, status_code=status, headers=headers)


def failure(error: OperationError, lang: Lang) -> Envelope:
    return Envelope(error.body(lang), status_code=error.status, headers=error.headers or None)
