"""datesync's exceptions; each docstring is the default message."""

from __future__ import annotations


class DatesyncError(Exception):
    """datesync failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class SettingsError(DatesyncError):
    """A configuration value is invalid."""


class DatabaseUnavailable(DatesyncError):
    """The database cannot be reached."""


class DatabaseRefused(DatesyncError):
    """The database server answered and refused the connection: a wrong URL that no retry can fix."""


class EmbeddedDatabaseError(DatesyncError):
    """The embedded PostgreSQL server could not be started."""


class MigrationError(DatesyncError):
    """The database schema could not be migrated."""


class HandlerError(DatesyncError):
    """The sync handler could not be loaded."""
