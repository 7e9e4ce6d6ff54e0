"""``FeatureStoreResource``: how the MLOps half reaches the feature store (the warehouse's feature views).

The DataOps half owns the warehouse file and creates its tables; this resource only connects.  DuckDB lets
one process at a time hold the file read-write, so steps that use it share the ``warehouse`` pool
(:data:`factory_assets.platform.partitions.WAREHOUSE_POOL`); the model registry is elsewhere
(:class:`factory_assets.ml.resources.RegistryResource`), so registry commands never wait for this lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from dagster_duckdb import DuckDBResource

from factory_assets.feature_store import store
from factory_assets.feature_store.contract import LEDGER_DDL
from factory_assets.platform.resources import HomeScoped


class FeatureStoreResource(HomeScoped):
    """The feature store of ``<home>/<source>/warehouse.duckdb``: point-in-time reads for training and serving."""

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the feature store, session time zone UTC, the views' tables ensured (idempotent
        ``CREATE ... IF NOT EXISTS``, so a model step on a home that never ingested fails on a missing
        partition, not a missing table).

        Opening retries with back-off while another process holds the file (``DuckDBResource``).
        """
        layout = self.layout.ensure()
        with DuckDBResource(database=str(layout.warehouse)).get_connection() as con:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(LEDGER_DDL)
            store.ensure_schema(con)
            yield con
