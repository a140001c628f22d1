"""Every runtime query, loaded by name from the .sql files beside this module.

Each file holds blocks headed `-- name: entity_verb` and a one-line `-- description`. Keeping SQL out of
Python code makes every statement easy to find, review and EXPLAIN.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: ([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a .sql file into {name: statement}; the text before the first header is ignored."""
    parts = _HEADER.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("-- ")]
        sql = "\n".join(lines).strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"query {name!r} is empty")
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        found[name] = sql
    return found


@cache
def all_queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sorted((resources.files("datesync.daemon.db") / "sql").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse(entry.read_text(encoding="utf-8")).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined in two files")
                found[name] = sql
    return found


def q(name: str) -> str:
    """The SQL of the named query."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in daemon/db/sql/*.sql") from None
