"""Tests of the shared SQL validation (factory_assets.data.sources.validation) and the order-free data version."""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import duckdb
import numpy as np
import pandas as pd

from factory_assets.data import warehouse
from factory_assets.data.sources.schema import EVENT_COLUMNS, empty_quarantine
from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets.data.sources.validation import utc_microseconds, validate_events

DAY = date(2024, 10, 2)


def _frame(ids, ts=None):
    n = len(ids)
    return pd.DataFrame(
        {"event_id": ids, "user_id": "u", "item_id": "i", "event_type": "view",
         "ts": ts if ts is not None else ["2024-10-02T10:00:00Z"] * n, "quantity": 1, "value": 0.0,
         "source_line": np.arange(1, n + 1)}
    )


def test_duplicates_unsorted_ids_first_valid_occurrence_wins():
    frame = _frame(["b", "a", "b", "c", "a"])
    frame.loc[0, "quantity"] = 0  # the first "b" is invalid: the second one is the first *valid* one
    accepted, quarantined = validate_events(frame, DAY)
    assert sorted(accepted["event_id"]) == ["a", "b", "c"]
    got = dict(zip(quarantined["source_line"].astype(int), quarantined["reason"]))
    assert got == {1: "bad_quantity", 5: "duplicate_event_id"}
    assert quarantined.set_index(quarantined["source_line"].astype(int)).loc[5, "ts"] == "2024-10-02T10:00:00+00:00"


def test_unicode_whitespace_ids_are_missing_and_ties_sort_by_event_id():
    frame = _frame(["\u3000", "\xa0 ", "z", "y", "\u00e9"])
    accepted, quarantined = validate_events(frame, DAY)
    assert quarantined["reason"].tolist() == ["missing_id", "missing_id"]
    assert accepted["event_id"].tolist() == ["y", "z", "\u00e9"]  # equal ts: by event_id


def test_simulator_day_passes_unchanged():
    events = ShopSimulator(seed=3, n_users=200, n_items=50, events_per_day=3000).fetch_day(DAY).events
    accepted, quarantined = validate_events(events, DAY)
    assert quarantined.empty
    text = {c: object for c in ("event_id", "user_id", "item_id", "event_type")}  # accepted text: str objects
    pd.testing.assert_frame_equal(accepted, events.astype(text))


def test_utc_microseconds_text_and_datetimes():
    us, bad = utc_microseconds(pd.Series([" 1970-01-01T00:00:01Z ", "1970-01-01 01:00:00+01:00", "x", None, "0001-01-01"]))
    assert us[:2].tolist() == [1_000_000, 0] and bad.tolist() == [False, False, True, True, False]
    typed = pd.Series(pd.to_datetime(["1970-01-01 00:00:02"]))
    assert utc_microseconds(typed)[0].tolist() == [2_000_000]


def _version(frame: pd.DataFrame) -> str:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    warehouse.ensure_schema(con)
    return warehouse.write_raw_partition(con, DAY, frame, empty_quarantine())


def test_data_version_is_content_only_and_stable_across_processes():
    events = ShopSimulator(seed=3, n_users=200, n_items=50, events_per_day=2000).fetch_day(DAY).events
    v = _version(events)
    assert _version(events.iloc[::-1].reset_index(drop=True)) == v  # row order does not matter
    changed = events.copy()
    changed.loc[5, "value"] = changed.loc[5, "value"] + 0.01
    assert _version(changed) != v
    assert _version(events.iloc[1:]) != v and _version(events.iloc[:0]) != v
    # Arrow-backed text (the simulator's) and object text of the same values: the same version
    assert _version(events.astype({c: object for c in ("event_id", "user_id", "item_id", "event_type")})) == v
    script = (
        "import duckdb; from datetime import date; from factory_assets.data import warehouse;"
        "from factory_assets.data.sources.simulator import ShopSimulator;"
        "from factory_assets.data.sources.schema import empty_quarantine;"
        "con = duckdb.connect(); con.execute(\"SET TimeZone = 'UTC'\"); warehouse.ensure_schema(con);"
        "e = ShopSimulator(seed=3, n_users=200, n_items=50, events_per_day=2000).fetch_day(date(2024, 10, 2)).events;"
        "print(warehouse.write_raw_partition(con, date(2024, 10, 2), e, empty_quarantine()))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == v
    assert list(events.columns) == list(EVENT_COLUMNS)
