"""Tests of factory_assets.data.sources.schema.validate_events: one crafted row per rejection reason."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from factory_assets.data.sources.schema import (
    EVENT_COLUMNS,
    MAX_ID_LENGTH,
    MAX_QUANTITY,
    QUARANTINE_COLUMNS,
    REASONS,
    validate_events,
)

DAY = date(2024, 10, 2)
LONG_OK = "u" * MAX_ID_LENGTH  # exactly the limit: accepted
TOO_LONG = "i" * (MAX_ID_LENGTH + 1)

# (source_line, event_id, user_id, item_id, event_type, ts, quantity, value)
GOOD = [
    (1, "e01", "u1", "i1", "view", "2024-10-02T10:00:00+02:00", 1, 0.0),  # +02:00 -> 08:00 UTC
    (2, "e02", "u2", "i2", "purchase", "2024-10-02 12:30:00", 3, 9.99),  # naive -> taken as UTC
    (3, "e03", LONG_OK, "i3", "rating", "2024-10-02T00:00:00Z", 1, 4.5),  # first instant of the day
    (4, "e04", "u4", "i4", "add_to_cart", "2024-10-02T23:59:59.999999+00:00", MAX_QUANTITY, 1.0),  # last
    (5, "e05", "u5", "i5", "return", "2024-10-03T01:30:00+02:00", 2, -3.5),  # -> 2024-10-02 23:30 UTC
]
BAD = [
    (6, None, "u6", "i6", "view", "2024-10-02T10:00:00Z", 1, 0.0, "missing_id"),
    (7, "e07", "", "i7", "view", "2024-10-02T10:00:00Z", 1, 0.0, "missing_id"),
    (8, "e08", "u8", "   ", "view", "2024-10-02T10:00:00Z", 1, 0.0, "missing_id"),
    (9, "e09", "u9", TOO_LONG, "view", "2024-10-02T10:00:00Z", 1, 0.0, "id_too_long"),
    (10, "e10", "u10", "i10", "click", "2024-10-02T10:00:00Z", 1, 0.0, "unknown_event_type"),
    (11, "e11", "u11", "i11", "view", "not a time", 1, 0.0, "bad_timestamp"),
    (12, "e12", "u12", "i12", "view", None, 1, 0.0, "bad_timestamp"),
    (13, "e13", "u13", "i13", "view", "2024-10-03T00:00:00Z", 1, 0.0, "ts_outside_partition"),  # end is open
    (14, "e14", "u14", "i14", "view", "2024-10-02T01:00:00+02:00", 1, 0.0, "ts_outside_partition"),  # 10-01 23:00Z
    (15, "e15", "u15", "i15", "purchase", "2024-10-02T10:00:00Z", 0, 1.0, "bad_quantity"),
    (16, "e16", "u16", "i16", "purchase", "2024-10-02T10:00:00Z", -2, 1.0, "bad_quantity"),
    (17, "e17", "u17", "i17", "purchase", "2024-10-02T10:00:00Z", 1.5, 1.0, "bad_quantity"),
    (18, "e18", "u18", "i18", "purchase", "2024-10-02T10:00:00Z", MAX_QUANTITY + 1, 1.0, "bad_quantity"),
    (19, "e19", "u19", "i19", "purchase", "2024-10-02T10:00:00Z", np.nan, 1.0, "bad_quantity"),
    (20, "e20", "u20", "i20", "purchase", "2024-10-02T10:00:00Z", 1, np.nan, "bad_value"),
    (21, "e21", "u21", "i21", "purchase", "2024-10-02T10:00:00Z", 1, np.inf, "bad_value"),
    (22, "e01", "u22", "i22", "view", "2024-10-02T11:00:00Z", 1, 0.0, "duplicate_event_id"),  # e01 again
]


def crafted() -> pd.DataFrame:
    rows = GOOD + [r[:-1] for r in BAD]
    frame = pd.DataFrame(rows, columns=["source_line", *EVENT_COLUMNS])
    frame["source_file"] = "crafted.csv"
    return frame


def test_every_reason_on_the_right_row():
    frame = crafted()
    accepted, quarantined = validate_events(frame, DAY)
    assert len(accepted) + len(quarantined) == len(frame)
    assert list(quarantined.columns) == list(QUARANTINE_COLUMNS)
    got = dict(zip(quarantined["source_line"].astype(int), quarantined["reason"]))
    assert got == {r[0]: r[-1] for r in BAD}
    assert set(quarantined["reason"]) <= set(REASONS)
    assert (quarantined["source_file"] == "crafted.csv").all()

    by_line = quarantined.set_index(quarantined["source_line"].astype(int))
    assert "user_id" in by_line.loc[7, "detail"]
    assert "item_id" in by_line.loc[8, "detail"] and "item_id" in by_line.loc[9, "detail"]
    assert by_line.loc[10, "detail"] == "event_type=click"
    assert by_line.loc[11, "ts"] == "not a time"  # the raw text is kept
    assert by_line.loc[22, "event_id"] == "e01"


def test_good_rows_accepted_unchanged():
    accepted, _ = validate_events(crafted(), DAY)
    utc = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731
    # sorted by (ts, event_id): e03 00:00, e01 08:00, e02 12:30, e05 23:30, e04 23:59:59.999999
    expected = pd.DataFrame(
        {
            "event_id": ["e03", "e01", "e02", "e05", "e04"],
            "user_id": [LONG_OK, "u1", "u2", "u5", "u4"],
            "item_id": ["i3", "i1", "i2", "i5", "i4"],
            "event_type": ["rating", "view", "purchase", "return", "add_to_cart"],
            "ts": pd.Series(
                [
                    utc("2024-10-02 00:00:00"),
                    utc("2024-10-02 08:00:00"),
                    utc("2024-10-02 12:30:00"),
                    utc("2024-10-02 23:30:00"),
                    utc("2024-10-02 23:59:59.999999"),
                ]
            ).astype("datetime64[us, UTC]"),
            "quantity": np.array([1, 1, 3, 2, MAX_QUANTITY], dtype=np.int64),
            "value": [4.5, 0.0, 9.99, -3.5, 1.0],
        }
    )
    assert list(accepted.columns) == list(EVENT_COLUMNS)
    pd.testing.assert_frame_equal(accepted, expected)
    assert str(accepted["ts"].dtype) == "datetime64[us, UTC]"
    assert accepted["quantity"].dtype == np.int64 and accepted["value"].dtype == np.float64


def test_without_a_day_no_partition_check():
    accepted, quarantined = validate_events(crafted(), None)
    # rows 13 and 14 are now accepted; everything else as before
    assert {"e13", "e14"} <= set(accepted["event_id"])
    assert "ts_outside_partition" not in set(quarantined["reason"])
    assert len(accepted) == len(GOOD) + 2
    assert len(accepted) + len(quarantined) == len(crafted())


def test_index_of_input_does_not_matter():
    frame = crafted()
    frame.index = np.arange(100, 100 + len(frame))[::-1]
    accepted, quarantined = validate_events(frame, DAY)
    assert len(accepted) == len(GOOD) and len(quarantined) == len(BAD)


def test_aware_datetime_column_is_converted_to_utc():
    frame = pd.DataFrame(
        {
            "event_id": ["a", "b"],
            "user_id": ["u", "u"],
            "item_id": ["i", "i"],
            "event_type": ["view", "view"],
            # 2024-10-02 01:00 in Berlin (CEST, +02:00) = 2024-10-01 23:00 UTC (outside); 03:00 -> 01:00 UTC
            "ts": pd.to_datetime(["2024-10-02 01:00", "2024-10-02 03:00"]).tz_localize("Europe/Berlin"),
            "quantity": [1, 1],
            "value": [0.0, 0.0],
        }
    )
    accepted, quarantined = validate_events(frame, DAY)
    assert accepted["event_id"].tolist() == ["b"]
    assert accepted["ts"].iloc[0] == pd.Timestamp("2024-10-02 01:00", tz="UTC")
    assert quarantined["reason"].tolist() == ["ts_outside_partition"]


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="value"):
        validate_events(crafted().drop(columns=["value"]), DAY)
    with pytest.raises(ValueError, match="event_type"):
        validate_events(crafted().drop(columns=["event_type"]), DAY)


def test_empty_frame():
    accepted, quarantined = validate_events(pd.DataFrame(columns=list(EVENT_COLUMNS)), DAY)
    assert accepted.empty and quarantined.empty
    assert list(accepted.columns) == list(EVENT_COLUMNS)
    assert list(quarantined.columns) == list(QUARANTINE_COLUMNS)
    assert str(accepted["ts"].dtype) == "datetime64[us, UTC]"
    assert accepted["quantity"].dtype == np.int64 and accepted["value"].dtype == np.float64


def test_naive_text_after_offset_text_is_still_utc():
    # Regression: pandas' ISO8601 parser used to give the naive row the +05:00 of the row before it.
    frame = pd.DataFrame(
        {
            "event_id": ["a", "b", "c"],
            "user_id": ["u", "u", "u"],
            "item_id": ["i", "i", "i"],
            "event_type": ["view", "view", "view"],
            "ts": ["2024-10-02T10:00:00+05:00", "2024-10-02T12:30:00", "2024-10-02T12:00:00-03:00"],
            "quantity": [1, 1, 1],
            "value": [0.0, 0.0, 0.0],
        }
    )
    accepted, quarantined = validate_events(frame, DAY)
    assert quarantined.empty
    # a: 10:00+05:00 = 05:00Z; b: naive = 12:30Z; c: 12:00-03:00 = 15:00Z
    assert dict(zip(accepted["event_id"], accepted["ts"])) == {
        "a": pd.Timestamp("2024-10-02 05:00", tz="UTC"),
        "b": pd.Timestamp("2024-10-02 12:30", tz="UTC"),
        "c": pd.Timestamp("2024-10-02 15:00", tz="UTC"),
    }


@pytest.mark.parametrize("broken", [{"event_id": None}, {"ts": "nope"}, {"quantity": 0.0}, {"value": np.nan}])
def test_all_rows_rejected_with_numeric_columns(broken):
    good = {"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "view", "ts": "2024-10-02T10:00:00Z",
            "quantity": 1.0, "value": 2.0}
    frame = pd.DataFrame([{**good, **broken}, {**good, **broken, "event_id": "e2" if "event_id" not in broken else None}])
    assert frame["value"].dtype == np.float64 and frame["quantity"].dtype == np.float64
    accepted, quarantined = validate_events(frame, DAY)
    assert accepted.empty and len(quarantined) == 2
    assert list(accepted.columns) == list(EVENT_COLUMNS)


def test_ids_with_control_characters_are_refused():
    # the HTTP service refuses ids that are not printable (422); ingest refuses control characters already.
    # Printable oddities (a space, an accented letter, a quote) stay accepted.
    rows = [
        ("ok1", "u 1", "caf\u00e9", None),
        ("ok2", 'u"2', "i2", None),
        ("nul\x00", "u", "i", "event_id contains a control character (NUL)"),
        ("e4", "u\r", "i", "user_id contains a control character (CR)"),
        ("e5", "u", "i\n5", "item_id contains a control character (LF)"),
        ("e6", "line\r\nend", "i", "user_id contains a control character (CR)"),  # the first one is named
        ("e7", "u", "\ttab", "item_id contains a control character (TAB)"),
        ("e8", "u\x1b[31m", "i", "user_id contains a control character (U+001B)"),
        ("e9", "u", "i\x7f", "item_id contains a control character (U+007F)"),
        ("e10", "u\x85", "i", "user_id contains a control character (U+0085)"),
        ("\n", "u", "i", "event_id is null or empty"),  # only whitespace: missing, as before
    ]
    frame = pd.DataFrame(
        {
            "source_line": range(1, len(rows) + 1),
            "event_id": [r[0] for r in rows],
            "user_id": [r[1] for r in rows],
            "item_id": [r[2] for r in rows],
            "event_type": "view",
            "ts": "2024-10-02T10:00:00Z",
            "quantity": 1,
            "value": 0.0,
        }
    )
    accepted, quarantined = validate_events(frame, DAY)
    assert sorted(accepted["event_id"]) == ["ok1", "ok2"]
    assert accepted.set_index("event_id").loc["ok1", "item_id"] == "caf\u00e9"
    got = {int(line): (reason, detail) for line, reason, detail in quarantined[["source_line", "reason", "detail"]].values}
    expected = {i + 1: ("id_control_character", r[3]) for i, r in enumerate(rows) if r[3] and i < 10}
    expected[11] = ("missing_id", "event_id is null or empty")
    assert got == expected
    assert "id_control_character" in REASONS and "control character" in REASONS["id_control_character"]
    assert quarantined.set_index(quarantined["source_line"].astype(int)).loc[3, "event_id"] == "nul\x00"  # kept raw


def test_integer_ids_when_every_row_is_rejected_early():
    # regression: with no row left after event_id's check, the integer user_id/item_id columns used to
    # break the string checks (AttributeError: Can only use .str accessor with string values)
    frame = pd.DataFrame(
        {"event_id": [None, ""], "user_id": [5, 6], "item_id": [7, 8], "event_type": "view",
         "ts": "2024-10-02T10:00:00Z", "quantity": 1, "value": 0.0}
    )
    accepted, quarantined = validate_events(frame, DAY)
    assert accepted.empty and quarantined["reason"].tolist() == ["missing_id", "missing_id"]
    assert quarantined["user_id"].tolist() == ["5", "6"]
    kept, _ = validate_events(frame.assign(event_id=["a", "b"]), DAY)
    assert kept["user_id"].tolist() == ["5", "6"] and kept["item_id"].tolist() == ["7", "8"]
