"""Tests of factory_assets.feature_store.retrieval: point-in-time training frames, TTL, online view, versions."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest

from factory_assets_tests.helpers import STORAGES, warehouse_connection
from factory_assets.data import warehouse
from factory_assets.feature_store import retrieval
from factory_assets.feature_store.retrieval import (
    feature_view_version,
    get_online_features,
    get_training_frame,
    materialize_online,
)
from factory_assets.feature_store.store import ITEM_DAILY, ITEM_FEATURES, USER_FEATURES, USER_ITEM_DAILY
from factory_assets.feature_store.views import FEATURE_VIEWS, build_view_partition
from factory_assets.data.sources.schema import EVENT_COLUMNS, empty_events, empty_quarantine

DAY1, DAY2, DAY3, DAY4 = date(2024, 10, 1), date(2024, 10, 2), date(2024, 10, 3), date(2024, 10, 4)


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def events(d: date, rows: list[tuple]) -> pd.DataFrame:
    """Rows of ``(event_id, user_id, item_id, event_type, "HH:MM", quantity, value)`` on ``d`` (UTC)."""
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    frame["ts"] = pd.to_datetime([f"{d.isoformat()} {t}" for t in frame["ts"]]).tz_localize("UTC").astype("datetime64[us, UTC]")
    frame["quantity"] = frame["quantity"].astype("int64")
    frame["value"] = frame["value"].astype("float64")
    return frame


# u1 buys A on day 1, views A on day 2, buys B on day 3 at 10:00.  u2 is only active on day 3 (a canary:
# any as_of before day 4 that sees u2 leaked).  Day 4 has an event too, which no as_of <= day 4 may see.
TIMELINE: dict[date, list[tuple]] = {
    DAY1: [("a1", "u1", "A", "purchase", "09:00", 1, 10.0)],
    DAY2: [("b1", "u1", "A", "view", "08:00", 1, 0.0)],
    DAY3: [("c0", "u2", "B", "purchase", "00:00", 1, 99.0), ("c1", "u1", "B", "purchase", "10:00", 2, 30.0)],
    DAY4: [("d1", "u1", "B", "purchase", "00:00", 1, 1000.0)],
}
VIEWS = (USER_ITEM_DAILY, ITEM_DAILY, USER_FEATURES, ITEM_FEATURES)


@pytest.fixture(params=STORAGES)
def con(tmp_path, request):
    with warehouse_connection(tmp_path, request.param) as connection:
        for d, rows in TIMELINE.items():
            warehouse.write_raw_partition(connection, d, events(d, rows), empty_quarantine())
            for view in VIEWS:
                build_view_partition(connection, view, d)
        yield connection


def rows(*pairs) -> pd.DataFrame:
    """Entity rows ``(user_id, item_id, as_of)``."""
    frame = pd.DataFrame(pairs, columns=["user_id", "item_id", "as_of"])
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    return frame


# --------------------------------------------------------------------------- point in time, by hand
def test_point_in_time_user_features_by_hand(con):
    entity = rows(
        ("u1", "B", at("2024-10-03 00:00")),  # sees days 1, 2
        ("u1", "B", at("2024-10-03 12:00")),  # after the 10:00 purchase, but day 3 is not complete: days 1, 2
        ("u1", "B", at("2024-10-03 23:59:59.999999")),  # still day 3: days 1, 2
        ("u1", "B", at("2024-10-04 00:00")),  # day 3 complete: days 1, 2, 3 (not day 4's 00:00 purchase)
        ("u2", "B", at("2024-10-03 12:00")),  # u2's purchase is at day 3 00:00 exactly: not visible
        ("u2", "B", at("2024-10-04 00:00")),
        ("u1", "B", at("2024-10-01 09:30")),  # nothing complete yet
    )
    got = get_training_frame(con, entity, views=(USER_FEATURES,))
    assert got.columns.tolist() == ["user_id", "item_id", "as_of"] + [
        f"user_features__{f}" for f in ("n_events", "n_conversions", "n_distinct_items", "value", "last_ts", "days")
    ]
    pd.testing.assert_frame_equal(got[["user_id", "item_id", "as_of"]], entity)
    assert got["user_features__days"].tolist() == [2, 2, 2, 3, 0, 1, 0]
    assert got["user_features__n_events"].tolist() == [2, 2, 2, 3, 0, 1, 0]
    assert got["user_features__n_conversions"].tolist() == [1, 1, 1, 2, 0, 1, 0]
    assert got["user_features__value"].tolist() == [10.0, 10.0, 10.0, 40.0, 0.0, 99.0, 0.0]
    # distinct items are summed per day: A on day 1, A on day 2, B on day 3
    assert got["user_features__n_distinct_items"].tolist() == [2, 2, 2, 3, 0, 1, 0]
    last = got["user_features__last_ts"]
    assert last.iloc[:4].tolist() == [at("2024-10-02 08:00")] * 3 + [at("2024-10-03 10:00")]
    assert last.iloc[5] == at("2024-10-03 00:00") and last.iloc[[4, 6]].isna().all()
    assert str(last.dtype) == "datetime64[us, UTC]"
    assert got["user_features__n_events"].dtype == "int64" and got["user_features__value"].dtype == "float64"


def test_point_in_time_user_item_and_item_views_by_hand(con):
    entity = rows(
        ("u1", "B", at("2024-10-03 12:00")),
        ("u1", "B", at("2024-10-04 00:00")),
        ("u1", "A", at("2024-10-03 12:00")),
    )
    got = get_training_frame(con, entity, views=(USER_ITEM_DAILY, ITEM_DAILY))
    # u1 x B: bought on day 3 only -> invisible until day 4
    assert got["user_item_daily__n_conversions"].tolist() == [0, 1, 1]
    assert got["user_item_daily__quantity"].tolist() == [0, 2, 1]
    assert got["user_item_daily__value"].tolist() == [0.0, 30.0, 10.0]
    assert got["user_item_daily__n_views"].tolist() == [0, 0, 1]
    assert got["user_item_daily__days"].tolist() == [0, 1, 2]
    assert got["user_item_daily__last_ts"].isna().tolist() == [True, False, False]
    # item B: 2 converters on day 3 (u1, u2); nothing before
    assert got["item_daily__n_converters"].tolist() == [0, 2, 1]
    assert got["item_daily__n_users"].tolist() == [0, 2, 2]  # A: u1 on day 1 and u1 on day 2 (user-days)
    assert got["item_daily__days"].tolist() == [0, 1, 2]


def test_time_zones_are_converted_to_utc_before_the_day_is_taken(con):
    entity = rows(("u1", "B", at("2024-10-04 00:00")), ("u1", "B", at("2024-10-04 00:00")))
    # 2024-10-04 01:00 in Paris (+02:00) is 10-03 23:00 UTC: day 3 is not complete yet
    entity["as_of"] = [pd.Timestamp("2024-10-04 01:00", tz="Europe/Paris"), pd.Timestamp("2024-10-03 20:30", tz="America/New_York")]
    got = get_training_frame(con, entity, views=(USER_FEATURES,))
    assert got["user_features__value"].tolist() == [10.0, 40.0]  # New York 20:30 = 10-04 00:30 UTC


def test_ttl_cut_off_by_hand(con):
    # user_features: TTL 28 days -> an as_of on day 29 (10-29) still reads day 1, on day 30 it does not
    assert FEATURE_VIEWS[USER_FEATURES].ttl_days == 28
    entity = rows(("u1", "A", at("2024-10-29 06:00")), ("u1", "A", at("2024-10-30 00:00")), ("u1", "A", at("2024-11-01 00:00")))
    got = get_training_frame(con, entity, views=(USER_FEATURES,))
    assert got["user_features__days"].tolist() == [4, 3, 1]  # 10-01..10-04 / 10-02..10-04 / 10-04 only
    assert got["user_features__value"].tolist() == [1040.0, 1030.0, 1000.0]
    # a shorter window: 2 days before day 4 = days 2 and 3
    short = get_training_frame(con, rows(("u1", "A", at("2024-10-04 00:00"))), views=(USER_FEATURES,), windows_days={USER_FEATURES: 2})
    assert short["user_features__value"].tolist() == [30.0] and short["user_features__days"].tolist() == [2]
    assert retrieval.feature_window(USER_FEATURES, at("2024-10-04 00:00"), 2) == (DAY2, DAY3)
    with pytest.raises(ValueError, match="TTL"):
        get_training_frame(con, entity, views=(USER_FEATURES,), windows_days=29)


def test_item_features_last_value_within_its_ttl(con):
    # item_features has TTL 7; trend features take the latest day found, counts are summed.
    # B: item_features day 3 = (2 converters; 7d 2, previous 0, trend 2.0), day 4 = (1; 7d 3, previous 0, trend 3.0)
    entity = pd.DataFrame({"item_id": ["B"] * 4})
    entity["as_of"] = [at("2024-10-04 00:00"), at("2024-10-05 00:00"), at("2024-10-11 00:00"), at("2024-10-12 00:00")]
    got = get_training_frame(con, entity, views=(ITEM_FEATURES,))
    # windows: 09-27..10-03 (day 3) / 09-28..10-04 (days 3, 4) / 10-04..10-10 (day 4) / 10-05..10-11 (none)
    assert got["item_features__days"].tolist() == [1, 2, 1, 0]
    assert got["item_features__converters_7d"].tolist() == [2, 3, 3, 0]
    assert got["item_features__converters_prev_7d"].tolist() == [0, 0, 0, 0]
    assert got["item_features__trend_7d"].tolist() == [2.0, 3.0, 3.0, 0.0]
    assert got["item_features__n_converters"].tolist() == [2, 3, 1, 0]


def test_default_views_and_errors(con):
    entity = rows(("u1", "A", at("2024-10-04 00:00")))
    got = get_training_frame(con, entity)
    for view in VIEWS:
        assert f"{view}__days" in got.columns
    only_items = get_training_frame(con, entity[["item_id", "as_of"]])
    assert {c.split("__")[0] for c in only_items.columns if "__" in c} == {ITEM_DAILY, ITEM_FEATURES}
    naive = entity.assign(as_of=pd.Timestamp("2024-10-04"))
    with pytest.raises(ValueError, match="tz-aware"):
        get_training_frame(con, naive)
    with pytest.raises(ValueError, match="entity columns"):
        get_training_frame(con, entity[["item_id", "as_of"]], views=(USER_FEATURES,))
    with pytest.raises(ValueError, match="already has"):
        get_training_frame(con, got, views=(USER_FEATURES,))
    with pytest.raises(ValueError, match="unknown feature view"):
        get_training_frame(con, entity, views=("nope",))
    # an empty request gives the typed, empty columns
    empty = get_training_frame(con, entity.iloc[:0], views=(USER_FEATURES,))
    assert len(empty) == 0 and empty["user_features__n_events"].dtype == "int64"


def test_index_and_order_are_kept(con):
    entity = rows(("u1", "B", at("2024-10-04 00:00")), ("u2", "B", at("2024-10-04 00:00")), ("u1", "B", at("2024-10-02 00:00")))
    entity.index = [30, 10, 10]
    got = get_training_frame(con, entity, views=(USER_FEATURES,))
    assert got.index.tolist() == [30, 10, 10]
    assert got["user_features__value"].tolist() == [40.0, 99.0, 10.0]


# --------------------------------------------------------------------------- online view = training
@pytest.mark.parametrize("as_of", [at("2024-10-03 12:00"), at("2024-10-05 00:00")])
def test_online_equals_training(con, as_of):
    for view in VIEWS:
        manifest = materialize_online(con, view, as_of)
        table = con.execute(f"SELECT * FROM online_{view}").df()
        entity = list(FEATURE_VIEWS[view].entity)
        assert len(table) > 0 and manifest["row_count"] == len(table) and (table["as_of"] == as_of).all()
        keys = pd.concat([table[entity], pd.DataFrame([dict.fromkeys(entity, "nobody")])], ignore_index=True)
        online = get_online_features(con, view, keys)
        training = get_training_frame(con, keys.assign(as_of=as_of), views=(view,))
        columns = entity + retrieval.feature_columns(view)
        pd.testing.assert_frame_equal(online[columns], training[columns])
        assert (online["as_of"] == as_of).all()
        assert online.iloc[-1][f"{view}__days"] == 0  # an unknown entity gets what training gives it


def test_online_manifest_records_as_of_and_input_versions(con):
    manifest = materialize_online(con, USER_FEATURES, at("2024-10-03 12:00"))
    assert manifest["as_of"] == "2024-10-03T12:00:00+00:00"
    assert (manifest["window_start"], manifest["window_end"]) == ("2024-09-05", "2024-10-02")
    ledger = warehouse.ledger(con, USER_FEATURES, DAY1, DAY2)
    assert manifest["inputs"] == [
        {"partition": d.isoformat(), "data_version": v, "row_count": int(n)}
        for d, v, n in zip(ledger["partition_day"], ledger["data_version"], ledger["row_count"])
    ]
    assert len(manifest["missing"]) == 26 and "2024-10-01" not in manifest["missing"]
    assert manifest["feature_version"] == feature_view_version(con, USER_FEATURES, date(2024, 9, 5), DAY2)
    assert retrieval.online_manifest(con, USER_FEATURES) == manifest
    # only u1 is active before day 3
    assert get_online_features(con, USER_FEATURES, ["u1", "u2"])["user_features__value"].tolist() == [10.0, 0.0]
    # rematerialising later replaces the table and its manifest
    later = materialize_online(con, USER_FEATURES, at("2024-10-05 00:00"))
    assert retrieval.online_manifest(con, USER_FEATURES) == later
    assert get_online_features(con, USER_FEATURES, ["u1", "u2"])["user_features__value"].tolist() == [1040.0, 99.0]
    pair = get_online_features(con, USER_FEATURES, pd.DataFrame({"user_id": ["u2"]}))
    assert pair["as_of"].tolist() == [at("2024-10-05 00:00")]


def test_online_lookup_errors(con):
    with pytest.raises(LookupError, match="materialize_online"):
        get_online_features(con, ITEM_DAILY, ["A"])
    with pytest.raises(ValueError, match="naive"):
        materialize_online(con, ITEM_DAILY, datetime(2024, 10, 4))
    materialize_online(con, USER_ITEM_DAILY, datetime(2024, 10, 4, tzinfo=timezone.utc))
    got = get_online_features(con, USER_ITEM_DAILY, [("u1", "A"), ("u2", "A")])
    assert got["user_item_daily__n_conversions"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="entity columns"):
        get_online_features(con, USER_ITEM_DAILY, pd.DataFrame({"user_id": ["u1"]}))


# --------------------------------------------------------------------------- feature view versions
def test_feature_view_version_by_hand_and_follows_content(con):
    ledger = warehouse.ledger(con, USER_FEATURES, DAY1, DAY3)
    text = "|".join(f"{d.isoformat()}:{v}" for d, v in zip(ledger["partition_day"], ledger["data_version"]))
    v = feature_view_version(con, USER_FEATURES, DAY1, DAY3)
    assert v == hashlib.sha256(f"user_features|{text}".encode()).hexdigest()
    assert feature_view_version(con, USER_FEATURES, DAY1, DAY3) == v
    assert feature_view_version(con, USER_FEATURES, DAY1, DAY4) != v
    assert feature_view_version(con, USER_ITEM_DAILY, DAY1, DAY3) != v
    # rebuilding with the same content keeps it, different content inside the range changes it
    build_view_partition(con, USER_FEATURES, DAY2)
    assert feature_view_version(con, USER_FEATURES, DAY1, DAY3) == v
    outside = feature_view_version(con, USER_FEATURES, DAY1, DAY2)
    warehouse.write_raw_partition(con, DAY3, events(DAY3, TIMELINE[DAY3][:1]), empty_quarantine())
    build_view_partition(con, USER_FEATURES, DAY3)
    assert feature_view_version(con, USER_FEATURES, DAY1, DAY3) != v
    assert feature_view_version(con, USER_FEATURES, DAY1, DAY2) == outside
    assert feature_view_version(con, USER_FEATURES, DAY1 - timedelta(days=5), DAY1 - timedelta(days=1)) == (
        hashlib.sha256(b"user_features|").hexdigest()
    )


def test_rebuilt_partition_changes_training_features_only_after_its_day(con):
    before = get_training_frame(con, rows(("u1", "B", at("2024-10-03 23:00")), ("u1", "B", at("2024-10-04 01:00"))), views=(USER_FEATURES,))
    warehouse.write_raw_partition(con, DAY3, empty_events(), empty_quarantine())
    build_view_partition(con, USER_FEATURES, DAY3)
    after = get_training_frame(con, rows(("u1", "B", at("2024-10-03 23:00")), ("u1", "B", at("2024-10-04 01:00"))), views=(USER_FEATURES,))
    assert after["user_features__value"].iloc[0] == before["user_features__value"].iloc[0] == 10.0
    assert (before["user_features__value"].iloc[1], after["user_features__value"].iloc[1]) == (40.0, 10.0)
