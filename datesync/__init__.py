"""datesync: keep PostgreSQL in step with a daily data source; backfill any date range durably.

The public handler API::

    async def sync(day: datetime.date, ctx: datesync.SyncContext) -> int | None: ...
"""

from datesync.daemon.sync.context import SyncContext

__version__ = "0.1.0"
__all__ = ["SyncContext", "__version__"]
