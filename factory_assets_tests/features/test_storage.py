"""The ``parquet`` warehouse storage: concurrent writers, readers during a write, kills mid-publish, maintenance,
and the same data versions as the DuckDB file (``factory_assets.feature_store.storage``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from factory_assets.data import maintenance, warehouse
from factory_assets.data.resources import WarehouseResource, ensure_tables
from factory_assets.data.sources.schema import QUARANTINE_COLUMNS, empty_quarantine
from factory_assets.feature_store import storage
from factory_assets.feature_store.views import build_view_partition
from factory_assets.platform.settings import HomeLayout, SettingsError
from factory_assets_tests.features.test_store import DAY1_EVENTS, DAY2_EVENTS, events
from factory_assets_tests.helpers import REPO_ROOT, warehouse_connection

DAY1, DAY2 = date(2024, 10, 1), date(2024, 10, 2)
VIEWS = ("user_item_daily", "item_daily", "user_features", "item_features")


def ledger(con) -> list[tuple]:
    return con.execute("SELECT asset, partition_day, data_version, row_count FROM partition_ledger ORDER BY 1, 2").fetchall()


def raw(con, day: date) -> list[tuple]:
    return con.execute("SELECT event_id, user_id FROM raw_events WHERE partition_day = ? ORDER BY 1", [day]).fetchall()


def test_a_reader_sees_the_old_partition_until_the_writer_commits(tmp_path):
    with warehouse_connection(tmp_path, "parquet") as writer:
        warehouse.write_raw_partition(writer, DAY1, events(DAY1, DAY1_EVENTS), empty_quarantine())
        with storage.connect_lake(tmp_path / "lake") as reader:  # another connection, as another process has
            with storage.transaction(writer):
                storage.clear(writer, "raw_events", partition_day=DAY1)
                writer.execute(f"INSERT INTO {storage.into(writer, 'raw_events')} "
                               "SELECT * FROM raw_events WHERE false")  # the day, staged empty
                assert raw(writer, DAY1) == []  # the writer reads its own write ...
                assert len(raw(reader, DAY1)) == len(DAY1_EVENTS)  # ... the reader the published file
            assert raw(reader, DAY1) == [] == raw(writer, DAY1)
            assert not (tmp_path / "lake" / "raw_events" / f"{DAY1}.parquet").exists()  # no rows: no file


def test_a_failed_write_publishes_nothing(tmp_path):
    with warehouse_connection(tmp_path, "parquet") as con:
        warehouse.write_raw_partition(con, DAY1, events(DAY1, DAY1_EVENTS), empty_quarantine())
        before = ledger(con)
        with pytest.raises(ZeroDivisionError):
            with storage.transaction(con):
                storage.clear(con, "raw_events", partition_day=DAY1)
                1 / 0
        assert ledger(con) == before and len(raw(con, DAY1)) == len(DAY1_EVENTS)
        with pytest.raises(RuntimeError, match="outside storage.transaction"):
            storage.into(con, "raw_events")
    assert not list((tmp_path / "lake").rglob("*.part"))


def _writer_script(lake: Path, days: list[date], hook: str = "") -> str:
    return textwrap.dedent(f"""
        import sys, os, signal
        from datetime import date
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from factory_assets.data import warehouse
        from factory_assets.data.resources import ensure_tables
        from factory_assets.data.sources.schema import empty_quarantine
        from factory_assets.feature_store import storage
        from factory_assets_tests.features.test_store import events
        HOOK
        with storage.connect_lake(__import__("pathlib").Path({str(lake)!r}), ensure=ensure_tables) as con:
            for iso in {[d.isoformat() for d in days]!r}:
                day = date.fromisoformat(iso)
                rows = [(f"{{iso}}-{{i:04d}}", f"u{{i % 17}}", f"i{{i % 5}}", "view", "08:00", 1, 0.0) for i in range(3000)]
                warehouse.write_raw_partition(con, day, events(day, rows), empty_quarantine())
    """).replace("HOOK", hook)


def test_two_processes_write_different_partitions_at_once(tmp_path):
    lake = tmp_path / "lake"
    with storage.connect_lake(lake, ensure=ensure_tables):
        pass  # the tables' schema files, as a first writer leaves them
    first = [date(2024, 10, d) for d in (1, 3, 5, 7, 9, 11)]
    second = [date(2024, 10, d) for d in (2, 4, 6, 8, 10, 12)]
    procs = [subprocess.Popen([sys.executable, "-c", _writer_script(lake, ds)], stderr=subprocess.PIPE, text=True)
             for ds in (first, second)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    with storage.connect_lake(lake) as con:
        rows = dict(con.execute("SELECT partition_day, count(*) FROM raw_events GROUP BY 1").fetchall())
        assert rows == {d: 3000 for d in first + second}
        versions = {r[1]: r[2] for r in ledger(con)}
        assert set(versions) == set(first + second)
        for day in first + second:  # the ledger's version is the stored rows' (recomputed here)
            assert versions[day] == warehouse.partition_data_version(con, day)


def _kill_at(stage: str) -> str:
    if stage == "before_journal":  # every temporary file written, nothing moved yet
        return ("import factory_assets.feature_store.storage as s\n"
                "s._write_journal = lambda *a: os.kill(os.getpid(), signal.SIGKILL)")
    # the journal written and the first file (the raw events') moved, the ledger's not
    return ("import factory_assets.feature_store.storage as s\n"
            "def _apply(moves):\n"
            "    final, temporary = next(m for m in moves if m[1] is not None)\n"
            "    os.replace(temporary, final); os.kill(os.getpid(), signal.SIGKILL)\n"
            "s._apply = _apply")


@pytest.mark.parametrize("stage", ["before_journal", "mid_publish"])
def test_a_writer_killed_while_publishing_leaves_all_or_nothing(tmp_path, stage):
    lake = tmp_path / "lake"
    subprocess.run([sys.executable, "-c", _writer_script(lake, [DAY1])], check=True, capture_output=True)
    with storage.connect_lake(lake) as con:
        old_version, old_rows = ledger(con)[0][2], raw(con, DAY1)
    rewrite = _writer_script(lake, [DAY1], _kill_at(stage)).replace('"view", "08:00"', '"purchase", "09:00"')
    killed = subprocess.run([sys.executable, "-c", rewrite], capture_output=True)
    assert killed.returncode == -9
    journals = list(lake.glob(".journal-*.json"))
    with storage.connect_lake(lake, ensure=ensure_tables) as con:  # a writer's connection finishes or drops it
        version = ledger(con)[0][2]
        types = {r[0] for r in con.execute("SELECT DISTINCT event_type FROM raw_events").fetchall()}
        if stage == "before_journal":
            assert not journals and version == old_version and raw(con, DAY1) == old_rows and types == {"view"}
        else:
            assert len(journals) == 1 and version != old_version and types == {"purchase"}
            assert version == warehouse.partition_data_version(con, DAY1)
    assert not list(lake.glob(".journal-*.json"))


def test_undated_quarantine_rows_are_kept_once_across_days(tmp_path):
    undated = pd.DataFrame([{c: None for c in QUARANTINE_COLUMNS}])
    undated = undated.assign(reason="ts_unparseable", source_sha256="ab" * 32, source_line=7).astype(
        empty_quarantine().dtypes.to_dict())
    for kind in ("duckdb", "parquet"):
        (tmp_path / kind).mkdir()
        with warehouse_connection(tmp_path / kind, kind) as con:
            for day in (DAY1, DAY2):
                warehouse.write_raw_partition(con, day, events(day, DAY2_EVENTS), empty_quarantine(), undated)
            assert con.execute("SELECT count(*) FROM raw_events_quarantine WHERE partition_day IS NULL").fetchone() == (1,)


def _scenario(con) -> dict:
    """Two days, features, an erasure and a retention; every table's rows and the ledger afterwards."""
    for day, rows in ((DAY1, DAY1_EVENTS), (DAY2, DAY2_EVENTS), (DAY2 + timedelta(days=1), DAY1_EVENTS[:3])):
        shifted = [(f"{day.day}{r[0]}", *r[1:]) for r in rows]
        warehouse.write_raw_partition(con, day, events(day, shifted), empty_quarantine())
        for view in VIEWS:
            build_view_partition(con, view, day)
    erased = maintenance.erase_user(con, "u1", "test")
    retained = maintenance.apply_retention(con, DAY2 + timedelta(days=1), 1)
    tables = {t: con.execute(f"SELECT * EXCLUDE (written_at) FROM {t} ORDER BY ALL").fetchall() if t == "partition_ledger"
              else con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
              for t in ("raw_events", "partition_ledger", *VIEWS, "feature_partition_inputs")}
    return {"erased": erased, "retained": retained, "tables": tables,
            "logs": [con.execute("SELECT count(*) FROM erasure_log").fetchone(),
                     con.execute("SELECT days_dropped FROM retention_log").fetchall()]}


def test_erasure_and_retention_give_the_same_rows_and_versions_in_both_storages(tmp_path):
    results = {}
    for kind in ("duckdb", "parquet"):
        (tmp_path / kind).mkdir()
        with warehouse_connection(tmp_path / kind, kind) as con:
            results[kind] = _scenario(con)
    duck, lake = results["duckdb"], results["parquet"]
    assert lake == duck
    assert duck["erased"]["rows_deleted"] == sum(r[1] == "u1" for r in DAY1_EVENTS + DAY2_EVENTS + DAY1_EVENTS[:3])
    assert duck["retained"]["days_dropped"] == 1 and duck["logs"] == [(1,), [(1,)]]
    assert all(r[1] != "u1" for r in duck["tables"]["raw_events"])


def test_a_home_keeps_its_storage(tmp_path):
    layout = HomeLayout(tmp_path, "simulator")
    assert layout.storage(None) == "duckdb" and layout.storage("parquet") == "parquet"
    with WarehouseResource(home=str(tmp_path), source="simulator", storage="parquet").connect() as con:
        warehouse.write_raw_partition(con, DAY1, events(DAY1, DAY1_EVENTS), empty_quarantine())
    assert layout.held_storage() == "parquet" and not layout.warehouse.exists()
    with WarehouseResource(home=str(tmp_path), source="simulator").connect() as con:  # no choice: what it holds
        assert len(raw(con, DAY1)) == len(DAY1_EVENTS)
    with pytest.raises(SettingsError, match=r"holds a parquet warehouse, not duckdb"):
        WarehouseResource(home=str(tmp_path), source="simulator", storage="duckdb").storage_name
    with pytest.raises(SettingsError, match="not one of duckdb, parquet"):
        WarehouseResource(home=str(tmp_path), source="simulator", storage="sqlite").storage_name


def test_file_names_come_from_safe_segments_only():
    assert storage._segment(DAY1) == "2024-10-01" and storage._segment("raw_events") == "raw_events"
    for hostile in ("../../etc", "a/b", ".hidden", "x" * 200, ""):
        assert storage._segment(hostile).startswith("h-")
    assert storage._segment(None) == "undated"


def test_erasure_reaches_undated_quarantine_rows_in_both_storages(tmp_path):
    undated = pd.DataFrame([{c: None for c in QUARANTINE_COLUMNS}] * 2)
    undated = undated.assign(reason="ts_unparseable", source_sha256="ab" * 32, source_line=[7, 8],
                             user_id=["u1", "u2"]).astype(empty_quarantine().dtypes.to_dict())
    for kind in ("duckdb", "parquet"):
        (tmp_path / kind).mkdir()
        with warehouse_connection(tmp_path / kind, kind) as con:
            warehouse.write_raw_partition(con, DAY1, events(DAY1, DAY1_EVENTS), empty_quarantine(), undated)
            maintenance.erase_user(con, "u1", "test")
            left = con.execute("SELECT user_id FROM raw_events_quarantine WHERE partition_day IS NULL").fetchall()
            assert left == [("u2",)], kind
            # the same file read again for another day: u2's row is kept once, u1's (still in the file) is back
            warehouse.write_raw_partition(con, DAY2, events(DAY2, DAY2_EVENTS), empty_quarantine(), undated)
            assert con.execute("SELECT user_id, source_line FROM raw_events_quarantine WHERE partition_day IS NULL "
                               "ORDER BY 2").fetchall() == [("u1", 7), ("u2", 8)], kind


def test_the_models_command_reads_a_parquet_home_without_its_duckdb_file(tmp_path):
    from factory_assets.ml import models_cli

    layout = HomeLayout(tmp_path, "simulator")
    with WarehouseResource(home=str(tmp_path), source="simulator", storage="parquet").connect() as con:
        warehouse.write_raw_partition(con, DAY1, events(DAY1, DAY1_EVENTS), empty_quarantine())
        expected = ledger(con)
    with models_cli._feature_store(layout, timeout_s=1) as con:  # lineage of `factory models show`
        assert ledger(con) == expected and not layout.warehouse.exists()
