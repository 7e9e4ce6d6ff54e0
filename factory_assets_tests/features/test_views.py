"""Tests of factory_assets.feature_store.views: the registry and the derived daily views, by hand."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import date, timedelta

import duckdb
import pandas as pd
import pytest

from factory_assets_tests.helpers import STORAGES, warehouse_connection
from factory_assets.data import warehouse
from factory_assets.feature_store import store, views
from factory_assets.feature_store.store import ITEM_DAILY, ITEM_FEATURES, USER_FEATURES, USER_ITEM_DAILY
from factory_assets.feature_store.views import FEATURE_VIEWS, FeatureView, build_view_partition
from factory_assets.data.sources.schema import EVENT_COLUMNS, empty_events, empty_quarantine

D = date(2024, 10, 1)


def day(n: int) -> date:
    """Day ``n`` of the test calendar (day 1 = 2024-10-01)."""
    return D + timedelta(days=n - 1)


def events(d: date, rows: list[tuple]) -> pd.DataFrame:
    """Rows of ``(event_id, user_id, item_id, event_type, "HH:MM", quantity, value)`` on ``d`` (UTC)."""
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    frame["ts"] = pd.to_datetime([f"{d.isoformat()} {t}" for t in frame["ts"]]).tz_localize("UTC").astype("datetime64[us, UTC]")
    frame["quantity"] = frame["quantity"].astype("int64")
    frame["value"] = frame["value"].astype("float64")
    return frame


def write(con, d: date, rows: list[tuple]) -> str:
    return warehouse.write_raw_partition(con, d, events(d, rows) if rows else empty_events(), empty_quarantine())


def ledger_row(con, asset: str, d: date) -> tuple | None:
    return con.execute(
        "SELECT data_version, row_count FROM partition_ledger WHERE asset = ? AND partition_day = ?", [asset, d]
    ).fetchone()


@pytest.fixture(params=STORAGES)
def con(tmp_path, request):
    with warehouse_connection(tmp_path, request.param) as connection:
        yield connection


# --------------------------------------------------------------------------- registry
def test_registry_names_entities_and_aggregations():
    assert list(FEATURE_VIEWS) == [USER_ITEM_DAILY, ITEM_DAILY, USER_FEATURES, ITEM_FEATURES]
    assert FEATURE_VIEWS[USER_ITEM_DAILY].entity == ("user_id", "item_id")
    assert FEATURE_VIEWS[USER_FEATURES].entity == ("user_id",)
    assert FEATURE_VIEWS[ITEM_FEATURES].entity == FEATURE_VIEWS[ITEM_DAILY].entity == ("item_id",)
    assert all(v.timestamp == "day" for v in FEATURE_VIEWS.values())
    uf = FEATURE_VIEWS[USER_FEATURES]
    assert uf.features == ("n_events", "n_conversions", "n_distinct_items", "value", "last_ts")
    assert uf.aggregations == ("sum", "sum", "sum", "sum", "max")
    assert FEATURE_VIEWS[ITEM_FEATURES].aggregation("trend_7d") == "last"
    assert FEATURE_VIEWS[ITEM_FEATURES].aggregation("n_converters") == "sum"
    with pytest.raises(dataclasses.FrozenInstanceError):
        uf.ttl_days = 1  # type: ignore[misc]


def test_feature_view_validation():
    ok = dict(name="v", entity=("user_id",), timestamp="day", ttl_days=3, features=("n",), description="", version="1")
    FeatureView(**ok)
    with pytest.raises(ValueError, match="identifier"):
        FeatureView(**{**ok, "features": ("n; DROP TABLE raw_events",)})
    with pytest.raises(ValueError, match="ttl_days"):
        FeatureView(**{**ok, "ttl_days": 0})
    with pytest.raises(ValueError, match="aggregations"):
        FeatureView(**{**ok, "aggregations": ("median",)})
    with pytest.raises(ValueError, match="unknown feature view"):
        build_view_partition(duckdb.connect(), "nope", D)


# --------------------------------------------------------------------------- user_features
DAY1_EVENTS = [
    ("e01", "u1", "A", "view", "08:00", 1, 0.0),
    ("e02", "u1", "A", "purchase", "09:00", 2, 20.0),
    ("e03", "u1", "B", "view", "10:00", 1, 0.0),
    ("e04", "u1", "B", "return", "10:30", 1, 10.0),  # money of a return is not value
    ("e05", "u2", "A", "rating", "11:00", 1, 4.0),  # 4 stars: a conversion
    ("e06", "u2", "C", "rating", "11:30", 1, 3.5),  # 3.5 stars: not a conversion
    ("e07", "u3", "C", "purchase", "12:00", 1, 7.5),
    ("e08", "u3", "C", "purchase", "23:59", 3, 2.5),
]


def test_user_features_by_hand(con):
    v_raw = write(con, day(1), DAY1_EVENTS)
    version, n = build_view_partition(con, USER_FEATURES, day(1))
    assert n == 3
    got = con.execute("SELECT * FROM user_features ORDER BY user_id").df()
    assert got["user_id"].tolist() == ["u1", "u2", "u3"]
    assert got["n_events"].tolist() == [4, 2, 2]
    assert got["n_conversions"].tolist() == [1, 1, 2]
    assert got["n_distinct_items"].tolist() == [2, 2, 1]
    assert got["value"].tolist() == [20.0, 0.0, 10.0]
    assert got["last_ts"].tolist() == [pd.Timestamp(f"2024-10-01 {t}", tz="UTC") for t in ("10:30", "11:30", "23:59")]
    # n_conversions agrees with user_item_daily's definition
    store.build_partition(con, USER_ITEM_DAILY, day(1))
    per_user = con.execute("SELECT user_id, sum(n_conversions) FROM user_item_daily GROUP BY 1 ORDER BY 1").fetchall()
    assert [int(c) for _, c in per_user] == got["n_conversions"].tolist()
    # version = sha256(view | view version | raw_events:day:raw version)
    assert version == hashlib.sha256(f"user_features|1|raw_events:2024-10-01:{v_raw}".encode()).hexdigest()
    assert ledger_row(con, USER_FEATURES, day(1)) == (version, 3)
    inputs = views.partition_inputs(con, USER_FEATURES, day(1))
    assert inputs[["input_asset", "input_partition", "input_data_version"]].values.tolist() == [["raw_events", day(1), v_raw]]
    assert views.missing_inputs(con, USER_FEATURES, day(1)) == []


def test_user_features_versions_follow_the_input(con):
    write(con, day(1), DAY1_EVENTS)
    v1, _ = build_view_partition(con, USER_FEATURES, day(1))
    assert build_view_partition(con, USER_FEATURES, day(1)) == (v1, 3)  # rebuild: same version, no duplicates
    assert con.execute("SELECT count(*) FROM user_features").fetchone()[0] == 3
    assert not views.is_stale(con, USER_FEATURES, day(1))
    write(con, day(1), DAY1_EVENTS[:-1])  # u3's second purchase removed
    assert views.is_stale(con, USER_FEATURES, day(1))
    v2, n = build_view_partition(con, USER_FEATURES, day(1))
    assert v2 != v1 and n == 3
    assert con.execute("SELECT n_events, value FROM user_features WHERE user_id = 'u3'").fetchone() == (1, 7.5)


def test_missing_own_partition_raises_and_empty_day_is_fine(con):
    with pytest.raises(LookupError, match="raw_events partition 2024-10-01"):
        build_view_partition(con, USER_FEATURES, day(1))
    write(con, day(1), [])
    with pytest.raises(LookupError, match="item_daily partition 2024-10-01"):
        build_view_partition(con, ITEM_FEATURES, day(1))
    assert ledger_row(con, ITEM_FEATURES, day(1)) is None
    assert build_view_partition(con, USER_FEATURES, day(1))[1] == 0
    assert ledger_row(con, USER_FEATURES, day(1))[1] == 0


def test_failed_build_rolls_back(con, monkeypatch):
    write(con, day(1), DAY1_EVENTS)
    v_old, _ = build_view_partition(con, USER_FEATURES, day(1))
    write(con, day(1), DAY1_EVENTS[:1])

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(views, "record_partition", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_view_partition(con, USER_FEATURES, day(1))
    monkeypatch.undo()
    assert con.execute("SELECT count(*) FROM user_features").fetchone()[0] == 3
    assert ledger_row(con, USER_FEATURES, day(1)) == (v_old, 3)
    assert build_view_partition(con, USER_FEATURES, day(1))[1] == 1


# --------------------------------------------------------------------------- item_features
def buy(eid: str, user: str, item: str) -> tuple:
    return (eid, user, item, "purchase", "12:00", 1, 1.0)


# item_features of day 15 reads item_daily of days 2..15: previous week = days 2..8, recent week = days 9..15.
TIMELINE: dict[int, list[tuple]] = {
    1: [buy("a1", "u1", "C"), buy("a2", "u2", "A")],  # day 1 is outside day 15's inputs
    3: [buy("c1", "u1", "A"), buy("c2", "u2", "A"), ("c3", "u3", "A", "view", "13:00", 1, 0.0)],
    4: [buy("d1", "u1", "B")],
    5: [buy("e1", "u3", "A")],
    # day 7 is never ingested: a missing input, counted as zero
    10: [buy("j1", "u1", "A")],
    12: [buy("l1", "u4", "A"), ("l2", "u5", "B", "view", "09:00", 1, 0.0)],
    15: [buy("o1", "u1", "A"), buy("o2", "u2", "A"), ("o3", "u6", "A", "view", "08:00", 1, 0.0)],
}


def build_timeline(con, last: int = 15, skip: tuple[int, ...] = (7,)) -> None:
    for n in range(1, last + 1):
        if n in skip:
            continue
        write(con, day(n), TIMELINE.get(n, []))
        store.build_partition(con, ITEM_DAILY, day(n))


def item_features(con, d: date) -> pd.DataFrame:
    return con.execute("SELECT * FROM item_features WHERE day = ? ORDER BY item_id", [d]).df().set_index("item_id")


def test_item_features_trend_by_hand(con):
    build_timeline(con)
    version, n = build_view_partition(con, ITEM_FEATURES, day(15))
    got = item_features(con, day(15))
    # C's only activity is day 1, outside days 2..15: no row.  B had a row on day 4 and day 12.
    assert n == 2 and got.index.tolist() == ["A", "B"]
    # A on day 15: users {u1, u2, u6}, converters {u1, u2}
    assert (got.loc["A", "n_users"], got.loc["A", "n_converters"]) == (3, 2)
    # A converter-days: previous week (days 2..8) = 2 (day 3) + 1 (day 5) = 3; recent (9..15) = 1 + 1 + 2 = 4
    assert (got.loc["A", "converters_prev_7d"], got.loc["A", "converters_7d"]) == (3, 4)
    assert got.loc["A", "trend_7d"] == pytest.approx((4 - 3) / (3 + 1))
    # B: no event on day 15; converted once on day 4 (previous week), only viewed on day 12
    assert got.loc["B"][["n_users", "n_converters", "converters_7d", "converters_prev_7d"]].tolist() == [0, 0, 0, 1]
    assert got.loc["B", "trend_7d"] == pytest.approx(-0.5)

    # inputs: item_daily days 2..15, day 7 missing (no ledger row), recorded as such and in the version
    inputs = views.partition_inputs(con, ITEM_FEATURES, day(15))
    assert inputs["input_partition"].tolist() == [day(n) for n in range(2, 16)]
    assert (inputs["input_asset"] == ITEM_DAILY).all()
    assert views.missing_inputs(con, ITEM_FEATURES, day(15)) == [day(7)]
    text = "|".join(
        f"item_daily:{day(k).isoformat()}:{(ledger_row(con, ITEM_DAILY, day(k)) or ('missing',))[0]}" for k in range(2, 16)
    )
    assert version == hashlib.sha256(f"item_features|1|{text}".encode()).hexdigest()


def test_item_features_near_the_start_counts_missing_as_zero(con):
    build_timeline(con, last=3, skip=())
    _, n = build_view_partition(con, ITEM_FEATURES, day(1))
    got = item_features(con, day(1))
    assert n == 2 and got.index.tolist() == ["A", "C"]
    assert got.loc["A"][["n_users", "n_converters", "converters_7d", "converters_prev_7d"]].tolist() == [1, 1, 1, 0]
    assert got.loc["A", "trend_7d"] == pytest.approx(1.0)
    # the 13 days before day 1 were never ingested: recorded as missing, oldest first
    assert views.missing_inputs(con, ITEM_FEATURES, day(1)) == [day(1) - timedelta(days=k) for k in range(13, 0, -1)]
    _, n3 = build_view_partition(con, ITEM_FEATURES, day(3))
    got3 = item_features(con, day(3))
    # A on day 3: recent = day 1 (u2) + day 3 (u1, u2) = 3 converter-days, nothing before
    assert got3.loc["A"][["n_users", "n_converters", "converters_7d", "converters_prev_7d"]].tolist() == [3, 2, 3, 0]
    assert len(views.missing_inputs(con, ITEM_FEATURES, day(3))) == 11


def test_item_features_version_changes_only_with_its_inputs(con):
    build_timeline(con)
    v, _ = build_view_partition(con, ITEM_FEATURES, day(15))
    assert build_view_partition(con, ITEM_FEATURES, day(15))[0] == v
    assert not views.is_stale(con, ITEM_FEATURES, day(15))

    # day 1 is not an input of day 15: rewriting it changes nothing
    write(con, day(1), TIMELINE[1][:1])
    store.build_partition(con, ITEM_DAILY, day(1))
    assert not views.is_stale(con, ITEM_FEATURES, day(15))
    assert build_view_partition(con, ITEM_FEATURES, day(15))[0] == v

    # an input partition in the previous week changes: new version and new values
    write(con, day(5), [])
    store.build_partition(con, ITEM_DAILY, day(5))
    assert views.is_stale(con, ITEM_FEATURES, day(15))
    v2, _ = build_view_partition(con, ITEM_FEATURES, day(15))
    assert v2 != v
    assert item_features(con, day(15)).loc["A", "converters_prev_7d"] == 2

    # the missing day 7 is back-filled (empty): the version changes although the values do not
    write(con, day(7), [])
    store.build_partition(con, ITEM_DAILY, day(7))
    assert views.is_stale(con, ITEM_FEATURES, day(15))
    v3, _ = build_view_partition(con, ITEM_FEATURES, day(15))
    assert v3 not in (v, v2)
    assert views.missing_inputs(con, ITEM_FEATURES, day(15)) == []
    assert item_features(con, day(15)).loc["A", "converters_prev_7d"] == 2


def test_base_views_are_delegated_to_the_store(con):
    write(con, day(1), DAY1_EVENTS)
    assert build_view_partition(con, ITEM_DAILY, day(1)) == store.build_partition(con, ITEM_DAILY, day(1))
    with pytest.raises(ValueError, match="not a derived"):
        views.input_partitions(ITEM_DAILY, day(1))
