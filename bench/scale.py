"""More daemons on one database: `datesync bench`'s scale measure alone (4 daemons at concurrency 5 against 1 at
20, alternated), with the four daemons' lock waits by wait event. For work on the engine's hot path.

    .venv/bin/python bench/scale.py [--dates 10000] [--repeats 3]

Uses DATABASE_URL's server, or a fresh embedded one, through `datesync bench`'s scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json

from datesync.bench import Sizes, database, measure_scale, scratch_database
from datesync.daemon.settings import Settings


async def scale(dates: int, repeats: int) -> dict[str, object]:
    sizes = dataclasses.replace(Sizes(), scale_dates=dates, repeats=repeats)
    async with database(Settings.from_env(), own_embedded=False) as db, scratch_database(db) as scratch:
        figures, waits = await measure_scale(scratch, sizes)
    return {**{k: round(v, 3) for k, v in figures.items()}, "waits": {k: round(v, 3) for k, v in waits.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dates", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(scale(args.dates, args.repeats)), indent=2))


if __name__ == "__main__":
    main()
