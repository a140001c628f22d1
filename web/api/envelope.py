# ruff: noqa: RUF001  (Chinese punctuation is meant)
"""The response envelope every API answer uses, and the error that carries a localisable 4xx to it.

`{"status": "success", "data": {...}}` or `{"status": "error", "message": ..., "errors": [{field, message}]}`.
Errors carry message keys, not text, so the handler renders them in the language the request prefers.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

from web.api.i18n import Lang, text


@dataclasses.dataclass(frozen=True, slots=True)
class Msg:
    """A message key of web.api.i18n and its parameters."""

    key: str
    params: Mapping[str, object] = dataclasses.field(default_factory=dict)

    def render(self, lang: Lang) -> str:
        return text(lang, self.key, **self.params)


@dataclasses.dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one named input (a body field, a query parameter, a header, or `body`)."""

    field: str
    msg: Msg


def problem(field: str, key: str, /, **params: object) -> FieldError:
    """The problem `key` with `field`; `params` fill in its message."""
    return FieldError(field, Msg(key, params))


class ApiError(Exception):
    """A 4xx (or 503) answer: the status, the field errors and an optional overall message."""

    def __init__(
        self,
        status: int,
        errors: Sequence[FieldError] = (),
        message: Msg | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message.key if message else ", ".join(e.field for e in errors))
        self.status = status
        self.errors = list(errors)
        self.message = message
        self.headers = dict(headers or {})

    def body(self, lang: Lang) -> dict[str, Any]:
        errors = [{"field": e.field, "message": e.msg.render(lang)} for e in self.errors]
        if self.message is not None:
            message = self.message.render(lang)
        else:
            message = ("；" if lang == "zh" else "; ").join(e["message"] for e in errors)
        return {"status": "error", "message": message, "errors": errors}


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


def failure(error: ApiError, lang: Lang) -> Envelope:
    return Envelope(error.body(lang), status_code=error.status, headers=error.headers or None)


def shown(value: object, limit: int = 60) -> str:
    """A piece of user input safe to quote in a message: short, one line."""
    raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    flat = raw.replace("\n", " ").replace("\r", " ")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
