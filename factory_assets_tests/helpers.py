"""Test helpers: a small simulated shop, and functions that drive the real asset graph with ``materialize()``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from factory_assets.data.resources import ensure_tables
from factory_assets.definitions import DATAOPS_ASSETS, MLOPS_ASSETS
from factory_assets.feature_store import storage
from factory_assets.resources import Factory, SimulatorOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ALL_ASSETS = [*DATAOPS_ASSETS, *MLOPS_ASSETS]
INGEST = [key.to_user_string() for a in DATAOPS_ASSETS for key in a.keys]
TRAIN = ["training_window", "candidate_model", "served_model"]

#: the warehouse storages (``FACTORY_STORAGE``): the feature store's by-hand tests run on each
STORAGES = ("duckdb", "parquet")

# A shop small enough for a 28-day window to ingest and train in seconds.
SMALL_SHOP = {"n_users": 400, "n_items": 120, "events_per_day": 3000, "seed": 11, "shift_date": "2024-11-11"}
FIRST_DAY = date(2024, 10, 1)


@contextmanager
def warehouse_connection(folder: Path, kind: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A warehouse connection in ``folder`` with every DataOps table, in ``kind`` storage (``duckdb``: one file;
    ``parquet``: the per-partition Parquet lake, :mod:`factory_assets.feature_store.storage`)."""
    if kind == "parquet":
        with storage.connect_lake(folder / "lake", ensure=ensure_tables) as con:
            yield con
        return
    con = duckdb.connect(str(folder / "w.duckdb"))
    try:
        con.execute("SET TimeZone='UTC'")
        ensure_tables(con)
        yield con
    finally:
        con.close()


def days(start: date, n: int) -> list[date]:
    """``n`` consecutive days from ``start``."""
    return [start + timedelta(days=i) for i in range(n)]


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset not found at {path} (needs the repository's ../shared/data)")
    return path


def small_factory(home: Path, **overrides) -> Factory:
    return Factory(home=str(home), source="simulator", source_path="", simulator=SimulatorOptions(**SMALL_SHOP), **overrides)


def run(factory: Factory, day: date, selection: list[str], instance: DagsterInstance | None = None,
        run_config: dict | None = None) -> ExecuteInProcessResult:
    return materialize(
        ALL_ASSETS,
        selection=selection,
        partition_key=day.isoformat(),
        resources=factory.resources(),
        instance=instance,
        raise_on_error=False,
        run_config=run_config,
    )


def ingest(factory: Factory, ingest_days: list[date]) -> None:
    for day in ingest_days:
        result = run(factory, day, INGEST)
        assert result.success, f"ingest {day} failed"


def train(factory: Factory, day: date, instance: DagsterInstance | None = None,
          candidate: dict | None = None) -> ExecuteInProcessResult:
    """The training selection for ``day``; ``candidate``: ``CandidateConfig`` fields of ``candidate_model``."""
    config = None if candidate is None else {"ops": {"candidate_model": {"config": candidate}}}
    return run(factory, day, TRAIN, instance, config)
