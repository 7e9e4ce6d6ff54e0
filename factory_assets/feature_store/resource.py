"""``FeatureStoreResource``: how the MLOps half reaches the feature store (the warehouse's feature views).

The DataOps half owns the warehouse file, creates its tables and is its only writer; this resource only
reads (a read-only DuckDB connection).  Everything the MLOps half writes (window manifests, shadow scores,
the versions) lives in the model registry's store (:class:`factory_assets.ml.resources.RegistryResource`),
so registry commands never wait for the warehouse's lock.  DuckDB still lets no reader in while another
process holds the file read-write, so steps that use this resource keep sharing the ``warehouse`` pool
(:data:`factory_assets.platform.partitions.WAREHOUSE_POOL`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import duckdb
from dagster_duckdb import DuckDBResource

from factory_assets.feature_store import storage, store
from factory_assets.feature_store.contract import LEDGER_DDL
from factory_assets.platform.resources import HomeScoped


class FeatureStoreResource(HomeScoped):
    """The feature store of ``<home>/<source>/warehouse.duckdb``: point-in-time reads for training and serving."""

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the feature store, session time zone UTC.

        The warehouse file is opened with DuckDB's ``access_mode = READ_ONLY``: a model step cannot write the
        DataOps half's store, and several readers may hold it at once.  Opening retries with back-off while
        another process holds the file read-write (``DuckDBResource``).

        A home that never ingested has no warehouse file, and DuckDB can neither open a missing file read-only
        nor create tables in one: the connection is then an empty in-memory stand-in holding the ledger and
        the feature views' tables (nothing is created on disk).  So a model step there fails as it would on an
        empty warehouse, on missing partitions (``window_complete`` names them), not on a missing file or table.

        In one process DuckDB refuses to open a file with a different configuration than a connection already
        open to it; when this process itself holds the warehouse read-write (a caller's DataOps connection,
        in-process), the read-only open falls back to the same read-write configuration (the lock is this
        process's already), and the step still only reads.
        """
        kind = self.storage_name
        layout = self.layout.ensure()
        path = layout.warehouse
        if kind == "parquet" and layout.lake.is_dir():
            with storage.connect_lake(layout.lake, temp_directory=layout.root / ".duckdb_tmp") as con:
                yield con
            return
        if not path.exists():
            with duckdb.connect(":memory:") as con:
                con.execute("SET TimeZone = 'UTC'")
                con.execute(LEDGER_DDL)
                store.ensure_schema(con)
                yield con
            return
        with ExitStack() as stack:
            try:
                con = stack.enter_context(DuckDBResource(
                    database=str(path), connection_config={"access_mode": "READ_ONLY"}).get_connection())
            except duckdb.ConnectionException as exc:
                if "different configuration" not in str(exc):
                    raise
                con = stack.enter_context(DuckDBResource(database=str(path)).get_connection())
            # closed even when the block raises (DuckDBResource closes only on a normal exit): a read-only
            # connection left open would keep this process from opening the file read-write
            stack.callback(con.close)
            con.execute("SET TimeZone = 'UTC'")
            yield con
