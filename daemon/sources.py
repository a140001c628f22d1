"""The source configuration: which named sources this process serves, with which handler and cap.

`DATESYNC_SOURCES` lists named sources, comma-separated, each `name=handler` with optional `;key=value`
options (only `concurrency` today):

    DATESYNC_SOURCES="orders=http;concurrency=2, rollup=sql, billing=acme.sync:daily"

The source `default` always exists (the API and psql name it when they name none); its handler is
`DATESYNC_HANDLER` unless `DATESYNC_SOURCES` lists `default` itself.

A handler reads its settings from the environment. For a named source, `DATESYNC_<NAME>_<VAR>` overrides
`DATESYNC_<VAR>` (name upper-cased, `-` as `_`): source `orders` reads `DATESYNC_ORDERS_HTTP_URL` first, then
`DATESYNC_HTTP_URL`. Settings every source shares (an API key) can so be given once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping

DEFAULT = "default"
BUILTIN_HANDLERS = ("demo", "noop", "http", "sql")

# The same rule as datesync.source's CHECK constraint.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_CUSTOM = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_OPTIONS = ("concurrency",)


@dataclasses.dataclass(frozen=True, slots=True)
class SourceSpec:
    """One configured source: its name, handler spec and optional cap on dates run at once per daemon."""

    name: str
    handler: str
    concurrency: int | None = None

    @property
    def env_prefix(self) -> str:
        """The prefix of this source's own variables: `DATESYNC_ORDERS_` for `orders`."""
        return env_prefix(self.name)


def env_prefix(name: str) -> str:
    return f"DATESYNC_{name.upper().replace('-', '_')}_"


def parse_sources(raw: str) -> tuple[SourceSpec, ...]:
    """Parse DATESYNC_SOURCES; raise ValueError with a readable reason."""
    specs: list[SourceSpec] = []
    for item in (part.strip() for part in raw.split(",")):
        if item:
            specs.append(_parse_item(item))
    if not specs:
        raise ValueError("expected name=handler items, such as orders=http,rollup=sql;concurrency=2")
    seen: dict[str, str] = {}
    for spec in specs:
        prefix = spec.env_prefix
        if prefix in seen:
            what = "twice" if seen[prefix] == spec.name else f"and {seen[prefix]!r} (same variable prefix {prefix})"
            raise ValueError(f"source {spec.name!r} is listed {what}")
        seen[prefix] = spec.name
    return tuple(specs)


def _parse_item(item: str) -> SourceSpec:
    head, *options = (p.strip() for p in item.split(";"))
    name, sep, handler = (p.strip() for p in head.partition("="))
    if not sep:
        raise ValueError(f"{item!r}: expected name=handler")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{item!r}: a source name is 1-63 of a-z, 0-9, _ and -, starting with a letter or digit")
    if handler not in BUILTIN_HANDLERS and not _CUSTOM.fullmatch(handler):
        raise ValueError(
            f"source {name!r}: handler {handler!r} is not one of {', '.join(BUILTIN_HANDLERS)} "
            "or package.module:function"
        )
    concurrency: int | None = None
    for option in options:
        key, sep, value = (p.strip() for p in option.partition("="))
        if not sep or key not in _OPTIONS:
            raise ValueError(f"source {name!r}: unknown option {option!r} (known: {', '.join(_OPTIONS)}=N)")
        if not value.isdigit() or not 1 <= int(value) <= 1000:
            raise ValueError(f"source {name!r}: concurrency must be a whole number from 1 to 1000")
        concurrency = int(value)
    return SourceSpec(name, handler, concurrency)


def configured(default_handler: str, declared: Iterable[SourceSpec]) -> dict[str, SourceSpec]:
    """Every source this process serves, `default` first."""
    found = {DEFAULT: SourceSpec(DEFAULT, default_handler)}
    for spec in declared:
        found[spec.name] = spec
    return found


class SourceEnv:
    """The environment one source's handler reads: its own `DATESYNC_<NAME>_X` first, then `DATESYNC_X`."""

    def __init__(self, source: str = DEFAULT, env: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.env = os.environ if env is None else env
        self.prefix = env_prefix(source)

    def _own(self, var: str) -> str:
        return self.prefix + var.removeprefix("DATESYNC_")

    def get(self, var: str) -> str | None:
        """The value of `var` for this source (stripped), or None when unset or blank."""
        for name in (self._own(var), var):
            value = self.env.get(name, "").strip()
            if value:
                return value
        return None

    def name(self, var: str) -> str:
        """The variable to name in a message: the source's own one when that is what was read."""
        own = self._own(var)
        if self.env.get(own, "").strip():
            return own
        return var if self.source == DEFAULT else f"{var} (or {own})"
