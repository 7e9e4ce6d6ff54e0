"""``intraday_features`` through Dagster: it materializes today so far (or a given ``as_of``), flags a category
shift with a WARN check, fails in one line when the source cannot be read, and the DataOps location automates it
every quarter of an hour under a one-hour freshness policy; ``behaviour_drift`` writes the item catalogue."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    evaluate_automation_conditions,
    materialize,
)
from dagster._core.test_utils import freeze_time

import factory_assets.data.resources as resources_module
from factory_assets.data.defs import definitions as dataops
from factory_assets.data.defs.intraday import INTRADAY_CHECK, cut_off, intraday_features
from factory_assets.data.defs.monitoring import BEHAVIOUR_DRIFT, behaviour_drift
from factory_assets.data.drift_history import item_category_map
from factory_assets.data.sources.faults import BrokenSource
from factory_assets.data.sources.validation import validate_events
from factory_assets.data.warehouse import write_raw_partition
from factory_assets.feature_store import store
from factory_assets.feature_store.contract import DATA_ASSET_KEYS, read_intraday, read_item_categories
from factory_assets.ml.defs import definitions as mlops
from factory_assets.platform import automation
from factory_assets.platform.keys import DATA_KEYS, INTRADAY_FEATURES
from factory_assets.platform.partitions import WAREHOUSE_POOL
from factory_assets_tests.helpers import STORAGES, small_factory

SHIFT_DAY = date(2024, 11, 11)  # SMALL_SHOP's preference shift
KEY = AssetKey(INTRADAY_FEATURES)


def _item_daily(factory, day: date) -> None:
    """raw_events and item_daily of ``day`` through the warehouse functions (no Dagster run: fast)."""
    with factory.warehouse() as con:
        accepted, rejected = validate_events(factory.event_source.fetch_day(day).events, day)
        write_raw_partition(con, day, accepted, rejected)
        store.build_partition(con, store.ITEM_DAILY, day)


def _refresh(factory, as_of: str | None):
    config = {} if as_of is None else {"as_of": as_of}
    return materialize([intraday_features], resources=factory.resources(), raise_on_error=False,
                       run_config={"ops": {INTRADAY_FEATURES: {"config": config}}})


def _failure(result) -> str:
    event = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    return event.event_specific_data.error.message


@pytest.mark.parametrize("storage", STORAGES)
def test_the_shift_days_morning_materializes_with_its_drift_flagged(tmp_path, storage):
    factory = small_factory(tmp_path, storage=storage)
    _item_daily(factory, SHIFT_DAY - timedelta(days=1))  # yesterday: the reference of the category drift
    result = _refresh(factory, "2024-11-11T10:00:00Z")
    assert result.success

    (mat,) = result.asset_materializations_for_node(INTRADAY_FEATURES)
    meta = {k: v.value for k, v in mat.metadata.items()}
    events = factory.event_source.fetch_day(SHIFT_DAY).events
    before = int((events["ts"] < pd.Timestamp("2024-11-11T10:00:00Z")).sum())
    assert 0 < before < len(events)
    assert meta["as_of"] == "2024-11-11T10:00:00+00:00" and meta["day"] == "2024-11-11"
    assert (meta["n_events"], meta["n_rejected"], meta["drifted"]) == (before, 0, True)
    assert meta["psi_categories"] > 0.25 and meta["reason"].startswith("categories psi")
    assert mat.tags["dagster/data_version"] == meta["data_version"]
    (check,) = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed, check.severity) == (INTRADAY_CHECK, False, AssetCheckSeverity.WARN)

    with factory.warehouse() as con:
        status, rows = read_intraday(con)
        assert (status["day"], status["n_events"], status["drifted"]) == (SHIFT_DAY, before, True)
        assert status["as_of"] == datetime(2024, 11, 11, 10, tzinfo=timezone.utc)
        assert len(rows) == meta["dagster/row_count"] > 0
        assert read_item_categories(con).to_dict() == item_category_map(factory.event_source)


def test_without_an_as_of_it_builds_today_so_far(tmp_path):
    started = datetime.now(timezone.utc)
    result = _refresh(small_factory(tmp_path), None)
    assert result.success
    (mat,) = result.asset_materializations_for_node(INTRADAY_FEATURES)
    as_of = datetime.fromisoformat(mat.metadata["as_of"].value)
    assert started <= as_of <= datetime.now(timezone.utc)
    assert mat.metadata["day"].value == (as_of - timedelta(microseconds=1)).date().isoformat()
    (check,) = result.get_asset_check_evaluations()
    assert check.passed  # no yesterday in this warehouse: no verdict, not a drift


def test_a_source_that_cannot_be_read_fails_in_one_line_naming_the_day(tmp_path, monkeypatch):
    monkeypatch.setattr(resources_module, "make_source", lambda *a, **k: BrokenSource(message="nothing landed yet"))
    result = _refresh(small_factory(tmp_path), "2024-11-11T10:00:00+00:00")
    assert not result.success
    assert not any(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)  # not retried
    message = _failure(result)
    assert "intraday_features 2024-11-11: no events from source 'simulator'" in message
    assert "nothing landed yet" in message and "Traceback" not in message


def test_a_bad_as_of_fails_naming_it(tmp_path):
    result = _refresh(small_factory(tmp_path), "yesterday noon")
    assert not result.success and "as_of 'yesterday noon' is not an ISO-8601 timestamp" in _failure(result)


def test_the_cut_off_is_utc_and_midnight_completes_the_day_before():
    assert cut_off("2024-11-11T12:00:00") == (SHIFT_DAY, datetime(2024, 11, 11, 12, tzinfo=timezone.utc))
    assert cut_off("2024-11-11T01:30:00+02:00") == (date(2024, 11, 10), datetime(2024, 11, 10, 23, 30, tzinfo=timezone.utc))
    assert cut_off("2024-11-12T00:00:00Z") == (SHIFT_DAY, datetime(2024, 11, 12, tzinfo=timezone.utc))
    now = datetime(2024, 11, 11, 9, 15, tzinfo=timezone.utc)
    assert cut_off(None, now=now) == (SHIFT_DAY, now)
    # a cut-off in the future would date a state "today" that has not begun: refused beyond 5 minutes of skew
    assert cut_off("2024-11-11T09:19:00Z", now=now)[1] == datetime(2024, 11, 11, 9, 19, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="is in the future"):
        cut_off("2024-11-11T09:21:00Z", now=now)
    with pytest.raises(ValueError, match="'11/11/2024'"):
        cut_off("11/11/2024")


@pytest.mark.parametrize("storage", STORAGES)
def test_behaviour_drift_writes_the_item_catalogue(tmp_path, storage):
    factory = small_factory(tmp_path, storage=storage)
    _item_daily(factory, SHIFT_DAY)
    result = materialize([behaviour_drift], partition_key=SHIFT_DAY.isoformat(), resources=factory.resources(),
                         raise_on_error=False)
    assert result.success
    assert result.asset_materializations_for_node(BEHAVIOUR_DRIFT)
    with factory.warehouse() as con:
        catalogue = read_item_categories(con)
    assert catalogue is not None and catalogue.to_dict() == item_category_map(factory.event_source)
    assert len(catalogue) == 120  # SMALL_SHOP's items


def test_the_dataops_location_automates_it_under_a_one_hour_freshness_policy():
    graph = dataops.defs.resolve_asset_graph()
    node = graph.get(KEY)
    assert node.is_materializable and node.partitions_def is None and node.group_name == "features"
    assert node.freshness_policy == automation.INTRADAY_FRESHNESS
    assert node.automation_condition == automation.INTRADAY_REFRESH
    (spec,) = dataops.defs.resolve_assets_def(KEY).specs
    assert spec.freshness_policy == automation.INTRADAY_FRESHNESS and spec.automation_condition == automation.INTRADAY_REFRESH
    assert {"duckdb", "sql"} <= set(spec.kinds) and intraday_features.op.pool == WAREHOUSE_POOL
    (check,) = intraday_features.check_specs
    assert check.name == INTRADAY_CHECK and not check.blocking
    # the location's automation sensor targets it; the daily job and the MLOps half's daily specs leave it out
    assert INTRADAY_FEATURES in DATA_KEYS and INTRADAY_FEATURES not in DATA_ASSET_KEYS
    assert KEY in dataops.defs.resolve_sensor_def(dataops.AUTOMATION_SENSOR).asset_selection.resolve(graph)
    assert KEY not in dataops.daily_ingest.selection.resolve(graph)
    ml_graph = mlops.defs.resolve_asset_graph()
    if ml_graph.has(KEY):  # where the MLOps location declares it, it is the same unpartitioned asset, external there
        assert not ml_graph.get(KEY).is_executable and ml_graph.get(KEY).partitions_def is None


def test_the_condition_requests_one_refresh_per_quarter_hour():
    defs = Definitions(assets=[intraday_features], resources=dataops.RESOURCES).map_asset_specs(func=automation.automate)
    instance, cursor, requested = DagsterInstance.ephemeral(), None, []
    minutes = (1, 6, 14, 16, 17, 29, 31, 32, 44, 46, 47)  # 10:01 .. 10:47 UTC, as the sensor ticks (every 30 s)
    for minute in minutes:
        with freeze_time(datetime(2024, 11, 11, 10, minute, tzinfo=timezone.utc)):
            result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        requested.append(result.get_num_requested(KEY))
    # first evaluation: no tick passed yet; then once after each of 10:15, 10:30, 10:45
    assert dict(zip(minutes, requested)) == {1: 0, 6: 0, 14: 0, 16: 1, 17: 0, 29: 0, 31: 1, 32: 0, 44: 0, 46: 1, 47: 0}
