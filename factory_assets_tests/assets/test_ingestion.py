"""Ingestion through the graph: transient faults retried to exactly-once, permanent ones failing fast,
and the landing folder with its sensor, late files and quarantine."""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import pandas as pd
from dagster import DagsterEventType, build_sensor_context

import factory_assets.data.resources as resources_module
from factory_assets.feature_store import store
from factory_assets.feature_store.contract import stale_inputs
from factory_assets.resources import Factory
from factory_assets.data.defs.sensors import landed_files_sensor
from factory_assets.data.sources.faults import BrokenSource
from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets_tests.helpers import FIRST_DAY, INGEST, SMALL_SHOP, days, run, small_factory

TRUTH = ShopSimulator(**{**SMALL_SHOP, "shift_date": date(2024, 11, 11)})


def _con(path):
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    return con


def _retries(result) -> int:
    return sum(1 for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)


def test_transient_faults_are_retried_and_every_event_lands_exactly_once(tmp_path):
    factory = small_factory(tmp_path, fault_rate=0.3, fault_seed=3)
    ingest_days = days(FIRST_DAY, 10)
    retries = 0
    for day in ingest_days:
        result = run(factory, day, ["raw_events"])
        assert result.success, day
        retries += _retries(result)
    with _con(tmp_path / "simulator" / "warehouse.duckdb") as con:
        stored = dict(con.execute("SELECT partition_day, count(*) FROM raw_events GROUP BY 1").fetchall())
        distinct = con.execute("SELECT count(DISTINCT event_id) = count(*) FROM raw_events").fetchone()[0]
    assert stored == {d: len(TRUTH.fetch_day(d).events) for d in ingest_days}  # counts equal the truth
    assert distinct
    assert retries >= 1  # faults were injected and retried


def test_a_permanent_source_error_fails_fast_without_retries(tmp_path, monkeypatch):
    monkeypatch.setattr(resources_module, "make_source", lambda *a, **k: BrokenSource(message="disk gone"))
    result = run(small_factory(tmp_path), FIRST_DAY, ["raw_events"])
    assert not result.success
    assert _retries(result) == 0
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert "cannot be read" in failure.event_specific_data.error.message
    assert "disk gone" in failure.event_specific_data.error.message


def _land(folder, name: str, frame: pd.DataFrame) -> None:
    tmp = folder / f".{name}.part"
    frame.to_csv(tmp, index=False)
    tmp.rename(folder / name)  # writers land files atomically


def _sensor_keys(factory: Factory, cursor: str | None):
    result = landed_files_sensor(build_sensor_context(resources=factory.resources(), cursor=cursor))
    return sorted(r.partition_key for r in result.run_requests), result.cursor


def test_landed_files_request_exactly_their_days_and_a_late_file_changes_only_its_day(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    d1, d2, d3 = days(FIRST_DAY, 3)
    first = pd.concat([TRUTH.fetch_day(d).events for d in (d1, d2, d3)], ignore_index=True)
    _land(landing, "batch-1.csv", first)
    factory = Factory(home=str(tmp_path / "home"), source="folder", source_path=str(landing))

    keys, cursor = _sensor_keys(factory, None)
    assert keys == [d.isoformat() for d in (d1, d2, d3)]
    for day in (d1, d2, d3):
        assert run(factory, day, INGEST).success
    warehouse = tmp_path / "home" / "folder" / "warehouse.duckdb"
    with _con(warehouse) as con:
        counts = dict(con.execute("SELECT partition_day, count(*) FROM raw_events GROUP BY 1").fetchall())
        versions = dict(con.execute("SELECT partition_day, data_version FROM partition_ledger WHERE asset = 'raw_events'").fetchall())
        window = store.window_manifest(con, d3, 3)
    assert counts == {d: len(TRUTH.fetch_day(d).events) for d in (d1, d2, d3)}
    assert _sensor_keys(factory, cursor)[0] == []  # nothing new: nothing requested

    late = TRUTH.fetch_day(d2).events.head(5).copy()
    late["event_id"] = "late-" + late["event_id"]
    late.loc[late.index[-1], "quantity"] = 0  # one bad row among the late ones
    _land(landing, "late-for-day-2.csv", late)
    keys, cursor = _sensor_keys(factory, cursor)
    assert keys == [d2.isoformat()]
    assert run(factory, d2, INGEST).success

    with _con(warehouse) as con:
        after = dict(con.execute("SELECT partition_day, data_version FROM partition_ledger WHERE asset = 'raw_events'").fetchall())
        n_d2 = con.execute("SELECT count(*) FROM raw_events WHERE partition_day = ?", [d2]).fetchone()[0]
        quarantine = con.execute(
            "SELECT source_file, source_line, reason FROM raw_events_quarantine WHERE partition_day = ?", [d2]
        ).fetchall()
        log = con.execute(
            "SELECT file_name, rows_accepted, rows_quarantined FROM ingestion_log WHERE partition_day = ? ORDER BY 1", [d2]
        ).fetchall()
        changed = stale_inputs(con, {"window": window})
    assert n_d2 == counts[d2] + 4
    assert quarantine == [("late-for-day-2.csv", 6, "bad_quantity")]  # header is line 1, the 5th row is line 6
    assert log == [("batch-1.csv", counts[d2], 0), ("late-for-day-2.csv", 4, 1)]
    assert after[d2] != versions[d2] and after[d1] == versions[d1] and after[d3] == versions[d3]
    assert {(c["asset"], c["partition"]) for c in changed} == {
        (store.USER_ITEM_DAILY, d2.isoformat()), (store.ITEM_DAILY, d2.isoformat())
    }  # a model trained on the old window is now stale, exactly for day 2


def test_sensor_skips_when_the_source_is_not_a_folder(tmp_path):
    result = landed_files_sensor(build_sensor_context(resources={"event_source": small_factory(tmp_path).event_source_resource}))
    assert "not 'folder'" in result.skip_message


def test_day_versions_are_reproducible_across_homes(tmp_path):
    a, b = small_factory(tmp_path / "a"), small_factory(tmp_path / "b")
    day = FIRST_DAY + timedelta(days=2)
    for factory in (a, b):
        assert run(factory, day, ["raw_events"]).success
    versions = []
    for home in ("a", "b"):
        with _con(tmp_path / home / "simulator" / "warehouse.duckdb") as con:
            versions.append(con.execute("SELECT data_version FROM partition_ledger").fetchone()[0])
    assert versions[0] == versions[1]
