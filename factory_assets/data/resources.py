"""The DataOps half's resources: the warehouse it owns and the event source it reads.

Both are :class:`~factory_assets.platform.resources.HomeScoped`: ``home`` and ``source`` default to the
environment at run time, so importing the definitions reads nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from functools import cached_property

import duckdb
from dagster import Config
from dagster_duckdb import DuckDBResource
from pydantic import Field

from factory_assets.data import drift_history, maintenance, warehouse
from factory_assets.data.sources import EventSource, make_source
from factory_assets.data.sources.faults import FlakySource
from factory_assets.feature_store import storage, store
from factory_assets.platform import settings
from factory_assets.platform.resources import HomeScoped


class SimulatorOptions(Config):
    """Overrides of the simulator's defaults (see ``factory_assets.data.sources.simulator.SimulatorConfig``)."""

    seed: int = Field(default=7, description="world and per-day seed")
    n_users: int = Field(default=3000, description="number of simulated users")
    n_items: int = Field(default=800, description="number of simulated items")
    events_per_day: float = Field(default=20_000, description="mean events on a plain weekday")
    shift_date: str = Field(default="2024-11-11", description="first UTC day of shifted preferences (ISO)")
    shift_strength: float = Field(default=1.5, description="log-multiplier of the preference shift; 0 = none")


class WarehouseResource(HomeScoped):
    """The DuckDB warehouse of ``<home>/<source>/``: raw events, quarantine, feature views, the ledger, drift
    history and the maintenance logs.  The DataOps half is its only writer."""

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection, every DataOps table ensured, session time zone UTC.

        ``duckdb`` storage: opening retries with back-off while another process holds the file
        (``DuckDBResource``); steps that open it share the ``warehouse`` pool so the multiprocess executor never
        contends for the lock.  ``parquet`` storage (:mod:`factory_assets.feature_store.storage`): an in-memory
        connection over ``<home>/<source>/lake``; any number of processes may hold one and write different
        partitions at once.
        """
        kind = self.storage_name
        layout = self.layout.ensure()
        if kind == "parquet":
            with storage.connect_lake(layout.lake, ensure=ensure_tables, temp_directory=layout.root / ".duckdb_tmp") as con:
                yield con
            return
        with DuckDBResource(database=str(layout.warehouse)).get_connection() as con:
            con.execute("SET TimeZone = 'UTC'")
            ensure_tables(con)
            yield con


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table the DataOps half writes (idempotent)."""
    warehouse.ensure_schema(con)
    store.ensure_schema(con)
    maintenance.ensure_schema(con)
    drift_history.ensure_schema(con)


class EventSourceResource(HomeScoped):
    """Where the events come from: the source's name and file/folder, simulator options, fault injection."""

    source_path: str | None = Field(
        default=None, description="file or folder of the source; default: FACTORY_SOURCE_PATH (at run time)"
    )
    simulator: SimulatorOptions = Field(default_factory=SimulatorOptions)
    fault_rate: float = Field(
        default=0.0, description="fault injection: share of source reads that fail with a transient error (0 = off)"
    )
    fault_seed: int = Field(default=0, description="seed of the injected faults")

    @property
    def path(self) -> str:
        """The configured file or folder, or ``FACTORY_SOURCE_PATH`` (empty for the simulator)."""
        return self.source_path if self.source_path is not None else settings.source_path()

    @cached_property
    def event_source(self) -> EventSource:
        """The configured :class:`EventSource` (built once per resource instance)."""
        options = {}
        if self.source_name == "simulator":
            options = self.simulator.model_dump()
            options["shift_date"] = date.fromisoformat(options["shift_date"])
        source = make_source(self.source_name, self.path or None, **options)
        return FlakySource(source, self.fault_rate, self.fault_seed) if self.fault_rate > 0 else source
