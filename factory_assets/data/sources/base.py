"""The ``EventSource`` abstraction: one UTC day of events in the common schema, plus what was rejected."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from factory_assets.data.sources.schema import empty_quarantine


class TransientSourceError(RuntimeError):
    """A failure worth retrying (timeouts, a file still being written, a flaky network share)."""


class PermanentSourceError(RuntimeError):
    """A failure no retry can fix (missing file, wrong format); fail fast with this message."""


@dataclass(frozen=True)
class FileIngest:
    """What one landed file contributed to one day: recorded per (file sha256, partition)."""

    name: str
    sha256: str
    size_bytes: int
    rows_accepted: int
    rows_quarantined: int


@dataclass(frozen=True)
class DayBatch:
    """What a source returns for one UTC day.

    Attributes:
        events: rows in the raw event schema (see :mod:`factory_assets.data.sources.schema`); they are
            validated again by the warehouse writer, so a source may leave row-level checks to it.
        quarantined: rows of this day the source itself rejected (columns :data:`~.schema.QUARANTINE_COLUMNS`).
        undated: rejected rows that belong to no day (unparseable or impossible timestamps, unreadable
            files); the writer records each ``(source_sha256, source_line)`` once, whichever day reads it.
        files: per landed file, what it gave this day (file-based sources only).
    """

    events: pd.DataFrame
    quarantined: pd.DataFrame = field(default_factory=empty_quarantine)
    undated: pd.DataFrame = field(default_factory=empty_quarantine)
    files: tuple[FileIngest, ...] = ()


class EventSource(abc.ABC):
    """A pluggable producer of interaction events, read one UTC day at a time.

    Subclasses set :attr:`name` and implement :meth:`fetch_day`.  ``fetch_day`` must be deterministic:
    reading the same day twice gives the same events with the same ``event_id``s, so re-materialising a
    partition replaces it with identical content (and the same data version).
    """

    name: str = "abstract"
    #: Length of the rolling training window, in days, that suits this source's activity.
    window_days: int = 28

    @abc.abstractmethod
    def fetch_day(self, day: date) -> DayBatch:
        """Return the events whose ``ts`` falls on ``day`` (UTC, half-open ``[00:00, 24:00)``).

        Raises:
            TransientSourceError: the read may succeed if retried.
            PermanentSourceError: the source is unusable (the message says why).
        """

    def describe(self) -> dict[str, str]:
        """Small JSON-able description for asset metadata."""
        return {"source": self.name}
