"""Sources that depend on each other: `DATESYNC_<NAME>_AFTER` parsed and checked as one graph.

    DATESYNC_ROLLUP_AFTER=orders              a date of rollup runs once the same date of orders has synced
    DATESYNC_WEEKLY_AFTER=orders:-6..0,fx     ... once the seven days of orders ending on it, and fx's same date

The daemon registers the graph in datesync.dependency at start; the database does the rest (waiting, release,
failure, staleness: daemon/db/functions/45_dependency.sql).
"""

from __future__ import annotations

import dataclasses
import graphlib
import re
from collections.abc import Mapping

from datesync.daemon.sources import env_prefix

_ITEM = re.compile(r"(?P<name>[a-z0-9][a-z0-9_-]{0,62})(?::(?P<lo>[+-]?\d{1,6})\.\.(?P<hi>[+-]?\d{1,6}))?")


@dataclasses.dataclass(frozen=True, slots=True)
class Upstream:
    """A date d of the downstream source waits for dates d + lo .. d + hi of `source`."""

    source: str
    lo: int = 0
    hi: int = 0

    def __str__(self) -> str:
        return self.source if (self.lo, self.hi) == (0, 0) else f"{self.source}:{self.lo}..{self.hi}"


def variable(source: str) -> str:
    return f"{env_prefix(source)}AFTER"


def parse_after(raw: str) -> tuple[Upstream, ...]:
    """One source's DATESYNC_<NAME>_AFTER; raise ValueError with a readable reason."""
    found: dict[str, Upstream] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        m = _ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f"{item!r}: expected a source name, or name:FROM..TO (day offsets, as in orders:-6..0)")
        lo, hi = int(m["lo"] or 0), int(m["hi"] or 0)
        if lo > hi:
            raise ValueError(f"{item!r}: the window's first offset must not be after its last")
        if m["name"] in found:
            raise ValueError(f"{item!r}: {m['name']} is listed twice")
        found[m["name"]] = Upstream(m["name"], lo, hi)
    return tuple(found.values())


def read_graph(env: Mapping[str, str], sources: list[str], max_range_days: int) -> dict[str, tuple[Upstream, ...]]:
    """Every configured source's upstream sources, checked: known sources, offsets within the range limit, no
    cycle. Raise ValueError whose message starts with the variable to fix."""
    graph: dict[str, tuple[Upstream, ...]] = {}
    for source in sources:
        name = variable(source)
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            upstream = parse_after(raw)
        except ValueError as exc:
            raise ValueError(f"{name}={raw} is invalid: {exc}") from None
        for up in upstream:
            if up.source == source:
                raise ValueError(f"{name}={raw} is invalid: a source cannot wait for itself")
            if up.source not in sources:
                raise ValueError(f"{name}={raw} is invalid: unknown source {up.source!r} "
                                 f"(configured: {', '.join(sources)})")
            if max(abs(up.lo), abs(up.hi)) >= max_range_days:
                raise ValueError(f"{name}={raw} is invalid: the offsets of {up.source} reach past the range limit "
                                 f"DATESYNC_MAX_RANGE_DAYS={max_range_days}")
        if upstream:
            graph[source] = upstream
    try:
        graphlib.TopologicalSorter({s: [u.source for u in ups] for s, ups in graph.items()}).prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise ValueError(f"{variable(cycle[0])} is invalid: the sources wait for each other in a cycle "
                         f"({' → '.join(reversed(cycle))}: each waits for the next)") from None
    return graph
