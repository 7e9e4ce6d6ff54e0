"""The intraday path (``factory_assets.data.intraday.build_intraday``), in both storages: the daily views' rows
once the day is complete, exactly the events before the cut-off, and the category drift of today so far."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest

from factory_assets.data.drift_history import item_category_map
from factory_assets.data.ingest import ingest_day
from factory_assets.data.intraday import build_intraday
from factory_assets.data.sources import make_source
from factory_assets.feature_store import store
from factory_assets.feature_store.contract import read_intraday, read_item_categories
from factory_assets_tests.helpers import SMALL_SHOP, STORAGES, warehouse_connection

SHIFT_DAY = date.fromisoformat(SMALL_SHOP["shift_date"])  # 2024-11-11, a Monday: preferences shift that day
PLAIN_DAY = date(2024, 10, 8)  # a Tuesday, weeks before the shift
# hand-written here, not read from the code: a view is weak evidence, a cart stronger, a purchase strongest
WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def at(day: date, hours: float = 0.0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(hours=hours)


@pytest.fixture(scope="module")
def source():
    """The small simulated shop, with its preference shift (strength 1.5) on SHIFT_DAY."""
    options = {**SMALL_SHOP, "shift_date": SHIFT_DAY, "shift_strength": 1.5}
    return make_source("simulator", None, **options)


@pytest.fixture(scope="module")
def categories(source):
    return item_category_map(source)


@pytest.fixture(params=STORAGES)
def con(tmp_path, request):
    with warehouse_connection(tmp_path, request.param) as connection:
        yield connection


def ingest(con, source, day: date) -> None:
    """The day's raw partition and its two feature views, as the daily assets write them."""
    ingest_day(con, day, source.fetch_day(day))
    for view in (store.USER_ITEM_DAILY, store.ITEM_DAILY):
        store.build_partition(con, view, day)


def rows(con, table: str, keys: str, day: date | None = None) -> pd.DataFrame:
    where, params = ("WHERE day = ?", [day]) if day is not None else ("", [])
    return con.execute(f"SELECT * FROM {table} {where} ORDER BY {keys}", params).df()


def test_intraday_features_equal_the_daily_ones_once_the_day_is_complete(con, source, categories):
    ingest(con, source, PLAIN_DAY)
    events = source.fetch_day(PLAIN_DAY).events
    result = build_intraday(con, PLAIN_DAY, at(PLAIN_DAY, 24), events, categories)

    assert (result.day, result.as_of, result.n_events, result.n_rejected) == (PLAIN_DAY, at(PLAIN_DAY, 24), len(events), 0)
    daily_user_item = rows(con, store.USER_ITEM_DAILY, "user_id, item_id", PLAIN_DAY)
    daily_item = rows(con, store.ITEM_DAILY, "item_id", PLAIN_DAY)
    assert len(daily_user_item) > 1000 and len(daily_item) > 100  # a real day, not two empty frames
    # row for row, every column, the same dtypes
    pd.testing.assert_frame_equal(rows(con, "intraday_user_item", "user_id, item_id"), daily_user_item)
    pd.testing.assert_frame_equal(rows(con, "intraday_item", "item_id"), daily_item)
    # what the MLOps half reads: the status row and the rows, and the catalogue
    status, user_item = read_intraday(con)
    assert (status["day"], status["as_of"], status["n_events"]) == (PLAIN_DAY, at(PLAIN_DAY, 24), len(events))
    assert status["data_version"] == result.data_version and len(user_item) == len(daily_user_item)
    catalogue = read_item_categories(con)
    assert catalogue is not None and catalogue.to_dict() == dict(sorted(categories.items()))


def test_a_cut_off_keeps_exactly_the_events_before_it(con, source, categories):
    cut = at(PLAIN_DAY, 12)
    events = source.fetch_day(PLAIN_DAY).events
    edge = events.iloc[[0, 0]].assign(  # one view a microsecond before noon (kept), one at noon exactly (not)
        event_id=["edge-before", "edge-at"], event_type="view", quantity=1, value=0.0,
        ts=pd.to_datetime([cut - timedelta(microseconds=1), cut]).astype(events["ts"].dtype))
    events = pd.concat([events, edge], ignore_index=True)
    result = build_intraday(con, PLAIN_DAY, cut, events, categories)

    morning = events[events["ts"] < pd.Timestamp(cut)]
    assert 0 < len(morning) < len(events) and "edge-before" in set(morning["event_id"])
    assert "edge-at" not in set(morning["event_id"])
    expected = (
        morning.assign(
            n_views=(morning["event_type"] == "view").astype("int64"),
            n_carts=(morning["event_type"] == "add_to_cart").astype("int64"),
            n_conversions=(morning["event_type"] == "purchase").astype("int64"),
            weight=morning["event_type"].map(WEIGHTS),
        )
        .groupby(["user_id", "item_id"], as_index=False)
        .agg(n_views=("n_views", "sum"), n_carts=("n_carts", "sum"), n_conversions=("n_conversions", "sum"),
             weight=("weight", "sum"), last_ts=("ts", "max"))
        .sort_values(["user_id", "item_id"], ignore_index=True)
    )
    got = rows(con, "intraday_user_item", "user_id, item_id")
    columns = ["user_id", "item_id", "n_views", "n_carts", "n_conversions", "weight", "last_ts"]
    pd.testing.assert_frame_equal(got[columns], expected[columns], check_dtype=False)
    assert set(pd.to_datetime(got["day"]).dt.date) == {PLAIN_DAY}
    items = rows(con, "intraday_item", "item_id")
    assert items["n_events"].sum() == len(morning)
    assert dict(zip(items["item_id"], items["n_users"])) == morning.groupby("item_id")["user_id"].nunique().to_dict()
    status = rows(con, "intraday_status", "day")
    assert len(status) == 1 and int(status["n_events"].iloc[0]) == len(morning) == result.n_events
    assert pd.Timestamp(status["as_of"].iloc[0]) == pd.Timestamp(cut)
    assert con.execute("SELECT count(*) FROM intraday_events").fetchone()[0] == len(morning)


def test_rejected_counts_the_rows_it_refuses_and_those_the_source_quarantined(con, source, categories):
    events = source.fetch_day(PLAIN_DAY).events
    bad = events.iloc[[0, 1]].assign(event_id=["bad-type", "bad-qty"], event_type=["teleport", "purchase"],
                                     quantity=[1, 0])  # unknown_event_type, bad_quantity
    result = build_intraday(con, PLAIN_DAY, at(PLAIN_DAY, 12), pd.concat([events, bad], ignore_index=True), categories,
                            source_rejected=3)  # e.g. a landing file's rows its reader already quarantined
    assert result.n_rejected == 2 + 3
    assert int(rows(con, "intraday_status", "day")["n_rejected"].iloc[0]) == 5


def test_before_the_first_event_the_tables_are_empty_not_missing(con, source, categories):
    result = build_intraday(con, PLAIN_DAY, at(PLAIN_DAY) + timedelta(microseconds=1), source.fetch_day(PLAIN_DAY).events,
                            categories)
    assert result.n_events == 0 and not result.drifted
    assert rows(con, "intraday_user_item", "user_id").empty and rows(con, "intraday_item", "item_id").empty
    status, user_item = read_intraday(con)
    assert status["n_events"] == 0 and user_item.empty


def test_a_refresh_replaces_the_previous_one(con, source, categories):
    events = source.fetch_day(PLAIN_DAY).events
    build_intraday(con, PLAIN_DAY, at(PLAIN_DAY, 18), events, categories)
    build_intraday(con, PLAIN_DAY, at(PLAIN_DAY, 9), events, categories)
    assert rows(con, "intraday_status", "day")["n_events"].tolist() == [int((events["ts"] < pd.Timestamp(at(PLAIN_DAY, 9))).sum())]
    assert rows(con, "intraday_user_item", "user_id")["last_ts"].max() < pd.Timestamp(at(PLAIN_DAY, 9))


def test_the_shift_days_morning_is_flagged_and_the_day_before_is_not(con, source, categories):
    before = SHIFT_DAY - timedelta(days=1)
    for day in (before - timedelta(days=1), before):  # each morning's reference: item_daily of the day before it
        ingest(con, source, day)

    calm = build_intraday(con, before, at(before, 10), source.fetch_day(before).events, categories)
    assert calm.psi_categories is not None and calm.psi_categories < 0.1 and not calm.drifted
    assert calm.reason == "categories within thresholds"  # the verdict's own terms (categories only)
    assert read_intraday(con)[0]["drifted"] is False

    shifted = build_intraday(con, SHIFT_DAY, at(SHIFT_DAY, 10), source.fetch_day(SHIFT_DAY).events, categories)
    assert shifted.drifted and shifted.psi_categories > 0.25, shifted
    assert shifted.reason.startswith("categories psi") and "items" not in shifted.reason
    status = read_intraday(con)[0]
    assert status["drifted"] is True and status["psi_categories"] == pytest.approx(shifted.psi_categories)


def test_without_categories_or_a_yesterday_there_is_no_verdict(con, source):
    events = source.fetch_day(PLAIN_DAY).events
    unknown = build_intraday(con, PLAIN_DAY, at(PLAIN_DAY, 12), events, None)
    assert (unknown.psi_categories, unknown.drifted, unknown.reason) == (None, False, "no item categories from this source")
    assert read_item_categories(con) is None
    first = build_intraday(con, PLAIN_DAY, at(PLAIN_DAY, 12), events, item_category_map(source))
    assert first.psi_categories is None and not first.drifted and "no reference" in first.reason


@pytest.mark.parametrize("as_of", [at(PLAIN_DAY), at(PLAIN_DAY, 24) + timedelta(seconds=1), at(PLAIN_DAY, -3)])
def test_an_as_of_outside_the_day_is_refused_by_name(con, source, as_of):
    with pytest.raises(ValueError, match=re.escape(as_of.isoformat())):
        build_intraday(con, PLAIN_DAY, as_of, source.fetch_day(PLAIN_DAY).events, None)
    assert read_intraday(con) is None  # nothing written


def test_a_naive_as_of_is_utc(con, source):
    result = build_intraday(con, PLAIN_DAY, at(PLAIN_DAY, 12).replace(tzinfo=None), source.fetch_day(PLAIN_DAY).events, None)
    assert result.as_of == at(PLAIN_DAY, 12)
