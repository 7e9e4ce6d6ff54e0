"""Tests of factory_assets.feature_store.store and factory_assets.data.warehouse on a temporary DuckDB file."""

from __future__ import annotations

import hashlib
from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pytest

from factory_assets_tests.helpers import STORAGES, warehouse_connection
from factory_assets.data import warehouse
from factory_assets.feature_store import store
from factory_assets.feature_store.store import EVENT_WEIGHTS, ITEM_DAILY, USER_ITEM_DAILY
from factory_assets.data.sources.schema import EVENT_COLUMNS, empty_events, empty_quarantine, quarantine_rows

DAY1, DAY2, DAY3 = date(2024, 10, 1), date(2024, 10, 2), date(2024, 10, 3)
W = EVENT_WEIGHTS


def events(day: date, rows: list[tuple]) -> pd.DataFrame:
    """Rows of ``(event_id, user_id, item_id, event_type, "HH:MM", quantity, value)`` on ``day`` (UTC)."""
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    frame["ts"] = pd.to_datetime([f"{day.isoformat()} {t}" for t in frame["ts"]]).tz_localize("UTC").astype("datetime64[us, UTC]")
    frame["quantity"] = frame["quantity"].astype("int64")
    frame["value"] = frame["value"].astype("float64")
    return frame


DAY1_EVENTS = [
    ("e01", "u1", "A", "view", "08:00", 1, 0.0),
    ("e02", "u1", "A", "view", "09:00", 1, 0.0),
    ("e03", "u1", "A", "add_to_cart", "09:10", 2, 20.0),
    ("e04", "u1", "A", "purchase", "09:20", 2, 20.0),
    ("e05", "u1", "A", "return", "10:00", 1, 10.0),
    ("e06", "u2", "A", "rating", "11:00", 1, 4.0),  # exactly 4 stars: a conversion
    ("e07", "u2", "B", "rating", "11:30", 1, 3.5),  # 3.5 stars: not a conversion
    ("e08", "u3", "B", "view", "12:00", 1, 0.0),
    ("e09", "u3", "B", "purchase", "12:05", 3, 7.5),
    ("e10", "u3", "B", "purchase", "13:00", 1, 2.5),
]
DAY2_EVENTS = [
    ("f01", "u1", "B", "view", "08:00", 1, 0.0),
    ("f02", "u4", "C", "purchase", "09:00", 1, 5.0),
]


@pytest.fixture(params=STORAGES)
def con(tmp_path, request):
    with warehouse_connection(tmp_path, request.param) as connection:
        yield connection


def write(con, day: date, rows: list[tuple], quarantined: pd.DataFrame | None = None) -> str:
    frame = events(day, rows) if rows else empty_events()
    return warehouse.write_raw_partition(con, day, frame, empty_quarantine() if quarantined is None else quarantined)


def view_rows(con, view: str, day: date) -> pd.DataFrame:
    keys = "user_id, item_id" if view == USER_ITEM_DAILY else "item_id"
    return con.execute(f"SELECT * FROM {view} WHERE day = ? ORDER BY {keys}", [day]).df()


def ledger_row(con, asset: str, day: date) -> tuple | None:
    return con.execute(
        "SELECT data_version, row_count FROM partition_ledger WHERE asset = ? AND partition_day = ?", [asset, day]
    ).fetchone()


def count(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_event_weights_are_the_documented_ones():
    assert W == {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0, "return": 0.0}
    assert store.RATING_POSITIVE_STARS == 4.0 and store.RATING_WEIGHTS == (5.0, 1.0)


# --------------------------------------------------------------------------- aggregates by hand
def test_user_item_daily_by_hand(con):
    write(con, DAY1, DAY1_EVENTS)
    version, n = store.build_partition(con, USER_ITEM_DAILY, DAY1)
    assert n == 4
    got = view_rows(con, USER_ITEM_DAILY, DAY1)
    ts = lambda t: pd.Timestamp(f"2024-10-01 {t}", tz="UTC")  # noqa: E731
    expected = pd.DataFrame(
        [
            # u1/A: 2 views, 1 cart, 1 purchase (2 units, 20.0), 1 return; weight 2*1 + 3 + 5 + 0 = 10
            ("u1", "A", 2, 1, 1, 1, 2, 20.0, 2 * W["view"] + W["add_to_cart"] + W["purchase"] + W["return"], ts("10:00")),
            # u2/A: a 4.0-star rating converts (1 unit, no money); weight 5
            ("u2", "A", 0, 0, 1, 0, 1, 0.0, 5.0, ts("11:00")),
            # u2/B: a 3.5-star rating does not convert; weight 1
            ("u2", "B", 0, 0, 0, 0, 0, 0.0, 1.0, ts("11:30")),
            # u3/B: 1 view, 2 purchases (3 + 1 units, 7.5 + 2.5 money); weight 1 + 5 + 5 = 11
            ("u3", "B", 1, 0, 2, 0, 4, 10.0, W["view"] + 2 * W["purchase"], ts("13:00")),
        ],
        columns=["user_id", "item_id", "n_views", "n_carts", "n_conversions", "n_returns", "quantity", "value", "weight", "last_ts"],
    )
    assert (got["day"].map(lambda d: pd.Timestamp(d).date()) == DAY1).all()
    for column in expected.columns:
        assert got[column].tolist() == expected[column].tolist(), column
    assert [10.0, 5.0, 1.0, 11.0] == got["weight"].tolist()
    assert ledger_row(con, USER_ITEM_DAILY, DAY1) == (version, 4)


def test_item_daily_by_hand(con):
    write(con, DAY1, DAY1_EVENTS)
    _, n = store.build_partition(con, ITEM_DAILY, DAY1)
    assert n == 2
    got = view_rows(con, ITEM_DAILY, DAY1)
    # A: users {u1, u2}; converters {u1 (purchase), u2 (4.0 rating)}; 6 events; 2 conversions
    # B: users {u2, u3}; converters {u3} (u2's 3.5 rating does not count); 4 events; 2 conversions (u3 twice)
    assert got["item_id"].tolist() == ["A", "B"]
    assert got["n_users"].tolist() == [2, 2]
    assert got["n_converters"].tolist() == [2, 1]
    assert got["n_events"].tolist() == [6, 4]
    assert got["n_conversions"].tolist() == [2, 2]


def test_partitions_only_read_their_own_day(con):
    write(con, DAY1, DAY1_EVENTS)
    write(con, DAY2, DAY2_EVENTS)
    for view in (USER_ITEM_DAILY, ITEM_DAILY):
        store.build_partition(con, view, DAY1)
        store.build_partition(con, view, DAY2)
    uid = view_rows(con, USER_ITEM_DAILY, DAY2)
    assert list(zip(uid["user_id"], uid["item_id"], uid["n_views"], uid["n_conversions"], uid["weight"])) == [
        ("u1", "B", 1, 0, 1.0),
        ("u4", "C", 0, 1, 5.0),
    ]
    items = view_rows(con, ITEM_DAILY, DAY2)
    assert list(zip(items["item_id"], items["n_users"], items["n_converters"], items["n_events"])) == [("B", 1, 0, 1), ("C", 1, 1, 1)]
    window = store.read_window(con, DAY1, DAY2)
    assert list(window.columns) == ["day", "user_id", "item_id", "weight", "n_conversions", "n_views", "n_carts", "n_returns"]
    assert window["day"].tolist() == [DAY1] * 4 + [DAY2] * 2
    assert window["n_conversions"].sum() == 1 + 1 + 0 + 2 + 0 + 1
    assert store.read_window(con, DAY2, DAY2)["user_id"].tolist() == ["u1", "u4"]


# --------------------------------------------------------------------------- versions and rewrites
def test_rewrite_is_idempotent_and_versioned_by_content(con):
    v_raw = write(con, DAY1, DAY1_EVENTS)
    assert ledger_row(con, warehouse.RAW_EVENTS, DAY1) == (v_raw, 10)
    v_uid, _ = store.build_partition(con, USER_ITEM_DAILY, DAY1)
    # data version = sha256(view | code version | raw data version), per the module docstring
    assert v_uid == hashlib.sha256(f"user_item_daily|{store.FEATURE_CODE_VERSION}|{v_raw}".encode()).hexdigest()

    # the same events in another row order: same raw version, same feature version, no duplicated rows
    assert write(con, DAY1, list(reversed(DAY1_EVENTS))) == v_raw
    assert store.build_partition(con, USER_ITEM_DAILY, DAY1) == (v_uid, 4)
    assert count(con, warehouse.RAW_EVENTS) == 10
    assert count(con, USER_ITEM_DAILY) == 4
    assert con.execute("SELECT count(*) FROM partition_ledger").fetchone()[0] == 2

    # changed content: a new raw version and a new feature version
    changed = [r if r[0] != "e09" else (*r[:5], 4, 7.5) for r in DAY1_EVENTS]  # 4 units instead of 3
    v_raw2 = write(con, DAY1, changed)
    assert v_raw2 != v_raw
    v_uid2, n = store.build_partition(con, USER_ITEM_DAILY, DAY1)
    assert v_uid2 != v_uid and n == 4
    u3 = view_rows(con, USER_ITEM_DAILY, DAY1).set_index(["user_id", "item_id"]).loc[("u3", "B")]
    assert u3["quantity"] == 4 + 1
    assert ledger_row(con, USER_ITEM_DAILY, DAY1) == (v_uid2, 4)


def test_quarantine_is_replaced_with_its_day(con):
    bad = quarantine_rows(events(DAY1, DAY1_EVENTS[:2]), "bad_value", "value=nan")
    write(con, DAY1, DAY1_EVENTS[2:], quarantined=bad)
    assert warehouse.quarantine_summary(con, DAY1) == {"bad_value": 2}
    assert len(warehouse.read_raw_partition(con, DAY1)) == 8
    write(con, DAY1, DAY1_EVENTS)
    assert warehouse.quarantine_summary(con, DAY1) == {}
    raw = warehouse.read_raw_partition(con, DAY1)
    assert raw["event_id"].tolist() == [r[0] for r in DAY1_EVENTS]
    assert raw["value"].tolist() == [r[6] for r in DAY1_EVENTS]


# --------------------------------------------------------------------------- empty and missing days
def test_empty_day_versus_missing_day(con):
    write(con, DAY2, [])
    assert ledger_row(con, warehouse.RAW_EVENTS, DAY2)[1] == 0
    for view in (USER_ITEM_DAILY, ITEM_DAILY):
        version, n = store.build_partition(con, view, DAY2)
        assert n == 0
        assert ledger_row(con, view, DAY2) == (version, 0)
        assert view_rows(con, view, DAY2).empty
    with pytest.raises(LookupError, match="2024-10-03"):
        store.build_partition(con, USER_ITEM_DAILY, DAY3)
    assert ledger_row(con, USER_ITEM_DAILY, DAY3) is None
    with pytest.raises(ValueError, match="unknown feature view"):
        store.build_partition(con, "nope", DAY2)


def test_window_manifest_reports_missing_days(con):
    write(con, DAY1, DAY1_EVENTS)
    write(con, DAY2, [])
    for view in (USER_ITEM_DAILY, ITEM_DAILY):
        store.build_partition(con, view, DAY1)
    store.build_partition(con, USER_ITEM_DAILY, DAY2)  # item_daily of DAY2 not built

    m = store.window_manifest(con, DAY2, 3)  # 2024-09-30 .. 2024-10-02
    assert (m["start"], m["end"], m["days"]) == ("2024-09-30", "2024-10-02", 3)
    assert m["complete"] is False
    assert m["missing"] == {USER_ITEM_DAILY: ["2024-09-30"], ITEM_DAILY: ["2024-09-30", "2024-10-02"]}
    assert [(i["asset"], i["partition"], i["row_count"]) for i in m["inputs"]] == [
        (USER_ITEM_DAILY, "2024-10-01", 4),
        (USER_ITEM_DAILY, "2024-10-02", 0),
        (ITEM_DAILY, "2024-10-01", 2),
    ]

    store.build_partition(con, ITEM_DAILY, DAY2)
    full = store.window_manifest(con, DAY2, 2)
    assert full["complete"] is True
    assert full["missing"] == {USER_ITEM_DAILY: [], ITEM_DAILY: []}
    expected_digest = hashlib.sha256(
        "|".join(f"{i['asset']}:{i['partition']}:{ledger_row(con, i['asset'], date.fromisoformat(i['partition']))[0]}" for i in full["inputs"]).encode()
    ).hexdigest()
    assert full["window_version"] == expected_digest
    assert len(full["inputs"]) == 4

    # the window version follows the content: rewriting DAY1 with other events changes it
    write(con, DAY1, DAY1_EVENTS[:-1])
    store.build_partition(con, USER_ITEM_DAILY, DAY1)
    assert store.window_manifest(con, DAY2, 2)["window_version"] != full["window_version"]
    # the manifest is only computed here: storing it is the MLOps half's (ml.registry.save_window_manifest)
    assert not hasattr(store, "save_window_manifest") and not hasattr(store, "load_window_manifest")


# --------------------------------------------------------------------------- failures roll back
def test_failed_feature_build_keeps_previous_version(con, monkeypatch):
    write(con, DAY1, DAY1_EVENTS)
    v_old, _ = store.build_partition(con, USER_ITEM_DAILY, DAY1)
    before = view_rows(con, USER_ITEM_DAILY, DAY1)
    write(con, DAY1, DAY1_EVENTS[:3])  # new raw content, so a rebuild would change the rows

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "record_partition", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        store.build_partition(con, USER_ITEM_DAILY, DAY1)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(view_rows(con, USER_ITEM_DAILY, DAY1), before)
    assert ledger_row(con, USER_ITEM_DAILY, DAY1) == (v_old, 4)
    # the connection is usable again and a retry succeeds
    assert store.build_partition(con, USER_ITEM_DAILY, DAY1)[1] == 1


def test_failed_raw_write_keeps_previous_version(con, monkeypatch):
    v_old = write(con, DAY1, DAY1_EVENTS)
    before = warehouse.read_raw_partition(con, DAY1)

    bad = events(DAY1, DAY2_EVENTS).astype({"quantity": object})
    bad.loc[1, "quantity"] = "lots"  # cannot be cast to BIGINT: the INSERT fails mid-transaction
    with pytest.raises(duckdb.Error):
        warehouse.write_raw_partition(con, DAY1, bad, empty_quarantine())
    pd.testing.assert_frame_equal(warehouse.read_raw_partition(con, DAY1), before)
    assert ledger_row(con, warehouse.RAW_EVENTS, DAY1) == (v_old, 10)

    def broken(*args, **kwargs):
        raise RuntimeError("ledger unavailable")

    monkeypatch.setattr(warehouse, "record_partition", broken)
    with pytest.raises(RuntimeError, match="ledger unavailable"):
        write(con, DAY1, DAY2_EVENTS)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(warehouse.read_raw_partition(con, DAY1), before)
    assert ledger_row(con, warehouse.RAW_EVENTS, DAY1) == (v_old, 10)
    assert count(con, warehouse.RAW_EVENTS) == 10




def _window_by_pandas(con, start: date, end: date) -> pd.DataFrame:
    """Second method: DuckDB's own pandas conversion (a Python object per row), as read_window was first written."""
    frame = con.execute(
        f"SELECT day, user_id, item_id, weight, n_conversions, n_views, n_carts, n_returns FROM {USER_ITEM_DAILY} "
        "WHERE day BETWEEN ? AND ? ORDER BY day, user_id, item_id", [start, end]).df()
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    return frame


def test_read_window_equals_duckdbs_pandas_conversion_with_one_object_per_distinct_value(con, monkeypatch):
    rng = np.random.default_rng(0)
    users = ["u1", "u10", "u9", "U2", "é", "e", "ab", "a", "日本", "z" * 40]
    rows = []
    for day in (DAY1, DAY2, DAY3):
        for n, (u, i) in enumerate(zip(rng.choice(users, 300), rng.choice(["A", "B", "b", "Ä", "i10", "i9"], 300))):
            kind = ("view", "add_to_cart", "purchase", "return", "rating")[n % 5]
            rows.append((f"{day}-{n}", str(u), str(i), kind, f"{8 + n % 10:02d}:{n % 60:02d}", 1 + n % 3, float(n % 7)))
    for day in (DAY1, DAY2, DAY3):
        write(con, day, [r for r in rows if r[0].startswith(str(day))])
        store.build_partition(con, USER_ITEM_DAILY, day)
    monkeypatch.setattr(store, "_BATCH_ROWS", 64)  # many record batches: ids first seen in later batches too
    for start, end in ((DAY1, DAY3), (DAY2, DAY2), (DAY3, date(2024, 12, 1)), (date(2024, 12, 1), date(2024, 12, 9))):
        got, want = store.read_window(con, start, end), _window_by_pandas(con, start, end)
        pd.testing.assert_frame_equal(got, want, check_exact=True)  # values, dtypes, column and row order
        for column in ("day", "user_id", "item_id"):
            assert all(type(a) is type(b) for a, b in zip(got[column], want[column]))
            assert len({id(v) for v in got[column]}) == got[column].nunique()  # shared objects
    assert len(store.read_window(con, DAY1, DAY3)) > 2 * 64  # read in several batches


def test_read_window_on_a_connection_with_an_unread_result(con):
    write(con, DAY1, DAY1_EVENTS)
    store.build_partition(con, USER_ITEM_DAILY, DAY1)
    con.execute("SELECT * FROM range(100000)").fetchone()  # left unfinished, as callers do
    assert store.read_window(con, DAY1, DAY1)["user_id"].tolist() == ["u1", "u2", "u2", "u3"]
