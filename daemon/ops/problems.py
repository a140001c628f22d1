# ruff: noqa: RUF001  (Chinese punctuation is meant)
"""What an operation refuses, as message keys rather than text: each adapter (the API's envelope, the CLI's one
line) renders them in its user's language, so the API and the CLI refuse the same inputs in the same words."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from datesync.daemon.ops.messages import Lang, text


@dataclasses.dataclass(frozen=True, slots=True)
class Msg:
    """A message key of daemon.ops.messages and its parameters."""

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


class OperationError(Exception):
    """A refused operation: its HTTP status (the CLI exits 2 for any), the field errors and an optional overall
    message."""

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

    def text(self, lang: Lang = "en") -> str:
        """The one line that says it all (the envelope's message)."""
        message: str = self.body(lang)["message"]
        return message


def shown(value: object, limit: int = 60) -> str:
    """A piece of user input safe to quote in a message: short, one line."""
    raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    flat = raw.replace("\n", " ").replace("\r", " ")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
