"""FolderSource: a bad-input suite of small crafted files with outcomes worked out by hand, plus fault injection.

Every case states which event ids are accepted on which UTC day, which rows are quarantined on the day
(file, 1-based source line, reason) and which are undated (file, line or None for a whole file, reason),
and how many data rows its readable files hold; the check then also proves that no row is lost or counted
twice: sum over all days of (accepted + quarantined) + undated rows with a line == data rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory_assets.data import warehouse
from factory_assets.data.sources import folder
from factory_assets.data.sources.base import DayBatch, EventSource, FileIngest, PermanentSourceError, TransientSourceError
from factory_assets.data.sources.faults import BrokenSource, FlakySource
from factory_assets.data.sources.folder import FolderSource, landed_files, partitions_touched
from factory_assets.data.sources.schema import EVENT_COLUMNS, MAX_CSV_FIELD, QUARANTINE_COLUMNS, REASONS

NOW = datetime(2024, 10, 10, 12, 0, tzinfo=timezone.utc)  # the clock of every FolderSource here
D1, D2, D3 = date(2024, 10, 1), date(2024, 10, 2), date(2024, 10, 3)
HEADER = "event_id,user_id,item_id,event_type,ts,quantity,value"
T = "2024-10-01T10:00:00Z"
SQL_ID = "'; DROP TABLE events; --"


def r(
    eid: str, user: str = "u1", item: str = "i1", etype: str = "view", ts: str = T, q: str = "1", v: str = "0.5"
) -> str:
    """One CSV data line in the event schema."""
    return ",".join([eid, user, item, etype, ts, q, v])


def csv_bytes(*rows: str, header: str = HEADER, eol: str = "\n") -> bytes:
    return (eol.join([header, *rows]) + eol).encode()


def parquet_bytes(columns: dict) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def good_columns(ids: list[str], ts: str = T) -> dict:
    n = len(ids)
    return {
        "event_id": ids,
        "user_id": ["u1"] * n,
        "item_id": ["i1"] * n,
        "event_type": ["view"] * n,
        "ts": [ts] * n,
        "quantity": [1] * n,
        "value": [0.5] * n,
    }


def without(columns: dict, name: str) -> dict:
    return {k: v for k, v in columns.items() if k != name}


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


def make_source(landing: Path) -> FolderSource:
    return FolderSource(landing, clock=lambda: NOW)


@pytest.fixture(autouse=True)
def _fresh_cache():
    folder.clear_cache()
    yield
    folder.clear_cache()


GOOD_PARQUET = parquet_bytes(good_columns(["p1", "p2", "p3", "p4"]))
TRUNCATED_PARQUET = GOOD_PARQUET[: len(GOOD_PARQUET) // 2]


@dataclass
class Case:
    id: str
    files: dict[str, bytes]
    day: date
    accepted: list[str]
    quarantined: list[tuple[str, int, str]] = field(default_factory=list)
    undated: list[tuple[str, int | None, str]] = field(default_factory=list)
    data_rows: int = 0  # data rows of the readable files (header and blank lines excluded)
    other_days: dict[date, list[str]] = field(default_factory=dict)  # day -> accepted ids (no quarantine)
    ts: dict[str, str] = field(default_factory=dict)  # event id -> expected UTC ts
    values: dict[tuple[str, str], object] = field(default_factory=dict)  # (event id, column) -> value
    detail: dict[str, str] = field(default_factory=dict)  # file -> text in its undated row's detail
    files_of_day: dict[str, tuple[int, int]] | None = None  # file -> (accepted, quarantined) on ``day``


CASES = [
    Case("good_rows", {"a.csv": csv_bytes(r("e1"), r("e2"), r("e3"))}, D1, ["e1", "e2", "e3"], data_rows=3,
         files_of_day={"a.csv": (3, 0)}),
    # missing `value`: the whole file is one undated row; the good file next to it is read as usual
    Case("missing_column_csv",
         {"a.csv": csv_bytes("e1,u1,i1,view,2024-10-01T10:00:00Z,1",
                             header="event_id,user_id,item_id,event_type,ts,quantity"),
          "b.csv": csv_bytes(r("b1"))},
         D1, ["b1"], undated=[("a.csv", None, "missing_column")], data_rows=1, detail={"a.csv": "'value'"},
         files_of_day={"b.csv": (1, 0)}),
    Case("missing_column_parquet", {"a.parquet": parquet_bytes(without(good_columns(["p1"]), "user_id"))},
         D1, [], undated=[("a.parquet", None, "missing_column")], detail={"a.parquet": "'user_id'"}),
    Case("extra_columns",
         {"a.csv": csv_bytes("e1,u1,i1,view,2024-10-01T10:00:00Z,1,0.5,DE,hello",
                             "e2,u1,i1,view,2024-10-01T11:00:00Z,2,1.5,FR,",
                             header=HEADER + ",country,note")},
         D1, ["e1", "e2"], data_rows=2, values={("e2", "quantity"): 2, ("e2", "value"): 1.5}),
    # columns in another order plus an extra one are fine too
    Case("reordered_columns",
         {"a.csv": csv_bytes("0.5,1,2024-10-01T10:00:00Z,view,i1,u1,e1,zzz",
                             header="value,quantity,ts,event_type,item_id,user_id,event_id,extra")},
         D1, ["e1"], data_rows=1, values={("e1", "user_id"): "u1", ("e1", "value"): 0.5}),
    Case("extra_column_10000_chars",
         {"a.csv": csv_bytes(r("e1") + "," + "x" * 10_000, r("e2") + ",short", header=HEADER + ",blob")},
         D1, ["e1", "e2"], data_rows=2),
    Case("empty_files", {"a.csv": b"", "b.parquet": b""}, D1, [], files_of_day={}),
    Case("header_only", {"a.csv": csv_bytes(), "b.csv": (HEADER + "\r\n").encode()}, D1, [], files_of_day={}),
    Case("header_only_parquet", {"a.parquet": parquet_bytes({c: pa.array([], pa.string()) for c in EVENT_COLUMNS})},
         D1, [], files_of_day={}),
    # Parquet nulls in each id column (row index + 1 = source line)
    Case("null_ids_parquet",
         {"a.parquet": parquet_bytes({**good_columns(["p1", "p2", "p3", "p4"]),
                                      "event_id": ["p1", None, "p3", "p4"],
                                      "user_id": ["u1", "u1", None, "u1"],
                                      "item_id": ["i1", "i1", "i1", None]})},
         D1, ["p1"], quarantined=[("a.parquet", 2, "missing_id"), ("a.parquet", 3, "missing_id"),
                                  ("a.parquet", 4, "missing_id")], data_rows=4,
         files_of_day={"a.parquet": (1, 3)}),
    Case("empty_string_ids_csv",
         {"a.csv": csv_bytes(r(""), r("e2", user=""), r("e3", item=""), r("e4", user="   "), r("e5"))},
         D1, ["e5"], quarantined=[("a.csv", 2, "missing_id"), ("a.csv", 3, "missing_id"),
                                  ("a.csv", 4, "missing_id"), ("a.csv", 5, "missing_id")], data_rows=5),
    Case("negative_zero_fractional_quantity",
         {"a.csv": csv_bytes(r("e1", q="-1"), r("e2", q="0"), r("e3", q="1.5"), r("e4", q="2"))},
         D1, ["e4"], quarantined=[("a.csv", 2, "bad_quantity"), ("a.csv", 3, "bad_quantity"),
                                  ("a.csv", 4, "bad_quantity")], data_rows=4, values={("e4", "quantity"): 2}),
    Case("huge_quantity",
         {"a.csv": csv_bytes(r("e1", q="100001"), r("e2", q="99999999999999999999999"), r("e3", q="1e400"),
                             r("e4", q="100000"), r("e5", q="1e3"))},
         D1, ["e4", "e5"], quarantined=[("a.csv", 2, "bad_quantity"), ("a.csv", 3, "bad_quantity"),
                                        ("a.csv", 4, "bad_quantity")], data_rows=5,
         values={("e4", "quantity"): 100_000, ("e5", "quantity"): 1000}),
    Case("nan_inf_values_csv",
         {"a.csv": csv_bytes(r("e1", v="NaN"), r("e2", v="inf"), r("e3", v="-inf"), r("e4", q="nan"),
                             r("e5", v=""), r("e6", v="12.5"))},
         D1, ["e6"], quarantined=[("a.csv", 2, "bad_value"), ("a.csv", 3, "bad_value"), ("a.csv", 4, "bad_value"),
                                  ("a.csv", 5, "bad_quantity"), ("a.csv", 6, "bad_value")], data_rows=6,
         values={("e6", "value"): 12.5}),
    Case("nan_inf_values_parquet",
         {"a.parquet": parquet_bytes({**good_columns(["p1", "p2", "p3", "p4"]),
                                      "value": [float("nan"), float("inf"), float("-inf"), 2.0]})},
         D1, ["p4"], quarantined=[("a.parquet", 1, "bad_value"), ("a.parquet", 2, "bad_value"),
                                  ("a.parquet", 3, "bad_value")], data_rows=4, values={("p4", "value"): 2.0}),
    # +02:00 -> minus 2 h; -05:00 -> plus 5 h; a row whose UTC day is another day appears only there
    Case("ts_with_offset",
         {"a.csv": csv_bytes(r("e1", ts="2024-10-01T12:30:00+02:00"), r("e2", ts="2024-10-02T01:30:00+02:00"),
                             r("e3", ts="2024-10-01T01:30:00+02:00"), r("e4", ts="2024-10-01T20:00:00-05:00"),
                             r("e5", ts="2024-10-01T12:00:00+0200"))},
         D1, ["e1", "e2", "e5"], data_rows=5,
         other_days={date(2024, 9, 30): ["e3"], D2: ["e4"]},
         ts={"e1": "2024-10-01T10:30:00Z", "e2": "2024-10-01T23:30:00Z", "e3": "2024-09-30T23:30:00Z",
             "e4": "2024-10-02T01:00:00Z", "e5": "2024-10-01T10:00:00Z"}),
    # naive = UTC; the day is half-open, so 2024-10-02T00:00:00 is the next day
    Case("ts_without_offset",
         {"a.csv": csv_bytes(r("e1", ts="2024-10-01 23:59:59"), r("e2", ts="2024-10-01T00:00:00"),
                             r("e3", ts="2024-10-02T00:00:00"), r("e4", ts="2024-10-01"))},
         D1, ["e1", "e2", "e4"], data_rows=4, other_days={D2: ["e3"]},
         ts={"e1": "2024-10-01T23:59:59Z", "e2": "2024-10-01T00:00:00Z", "e3": "2024-10-02T00:00:00Z",
             "e4": "2024-10-01T00:00:00Z"}),
    # naive and aware strings in one file do not leak offsets into each other
    Case("ts_mixed_naive_and_offset",
         {"a.csv": csv_bytes(r("e1", ts="2024-10-01T12:00:00+02:00"), r("e2", ts="2024-10-01T12:00:00"))},
         D1, ["e1", "e2"], data_rows=2, ts={"e1": "2024-10-01T10:00:00Z", "e2": "2024-10-01T12:00:00Z"}),
    Case("ts_z_suffix",
         {"a.csv": csv_bytes(r("e1", ts="2024-10-01T10:00:00Z"), r("e2", ts="2024-10-01T10:00:00.250Z"),
                             r("e3", ts="2024-10-01T10:00:00z"))},
         D1, ["e1", "e2", "e3"], data_rows=3,
         ts={"e1": "2024-10-01T10:00:00Z", "e2": "2024-10-01T10:00:00.250Z", "e3": "2024-10-01T10:00:00Z"}),
    Case("ts_outside_partition",
         {"a.csv": csv_bytes(r("e1"), r("e2", ts="2024-10-03T08:00:00Z"))},
         D1, ["e1"], data_rows=2, other_days={D3: ["e2"]}, files_of_day={"a.csv": (1, 0)}),
    # NOW = 2024-10-10T12:00Z, tolerance 5 min: 12:04 is accepted, 12:06 is in the future
    Case("ts_in_future",
         {"a.csv": csv_bytes(r("e1", ts="2024-10-10T12:04:00Z"), r("e2", ts="2024-10-10T12:06:00Z"),
                             r("e3", ts="2099-01-01T00:00:00Z"), r("e4", ts="9999-12-31T23:59:59Z"))},
         date(2024, 10, 10), ["e1"], undated=[("a.csv", 3, "ts_in_future"), ("a.csv", 4, "ts_in_future"),
                                              ("a.csv", 5, "ts_in_future")], data_rows=4),
    Case("ts_before_1970",
         {"a.csv": csv_bytes(r("e1", ts="1969-12-31T23:59:59Z"), r("e2", ts="1970-01-01T00:00:00Z"),
                             r("e3", ts="1900-01-01"), r("e4", ts="0001-01-01T00:00:00"),
                             r("e5", ts="1970-01-01T01:00:00+02:00"))},
         date(1970, 1, 1), ["e2"], undated=[("a.csv", 2, "ts_before_1970"), ("a.csv", 4, "ts_before_1970"),
                                            ("a.csv", 5, "ts_before_1970"), ("a.csv", 6, "ts_before_1970")],
         data_rows=5, ts={"e2": "1970-01-01T00:00:00Z"}),
    Case("ts_unparseable",
         {"a.csv": csv_bytes(r("e1", ts="yesterday"), r("e2", ts=""), r("e3", ts="2024-13-01T00:00:00"),
                             r("e4", ts="1727776800"), r("e5"))},
         D1, ["e5"], undated=[("a.csv", 2, "bad_timestamp"), ("a.csv", 3, "bad_timestamp"),
                              ("a.csv", 4, "bad_timestamp"), ("a.csv", 5, "bad_timestamp")], data_rows=5),
    # first occurrence (line 2, user u1) wins
    Case("duplicate_ids_within_file",
         {"a.csv": csv_bytes(r("e1"), r("e2"), r("e1", user="u2"), r("e1", user="u3"), r("e3"))},
         D1, ["e1", "e2", "e3"], quarantined=[("a.csv", 4, "duplicate_event_id"), ("a.csv", 5, "duplicate_event_id")],
         data_rows=5, values={("e1", "user_id"): "u1"}, files_of_day={"a.csv": (3, 2)}),
    Case("duplicate_ids_across_files",
         {"a.csv": csv_bytes(r("x1"), r("x2")), "b.csv": csv_bytes(r("x1", user="ub"), r("x3"))},
         D1, ["x1", "x2", "x3"], quarantined=[("b.csv", 2, "duplicate_event_id")], data_rows=4,
         values={("x1", "user_id"): "u1"}, files_of_day={"a.csv": (2, 0), "b.csv": (1, 1)}),
    # z.csv lands first, but file-name order decides: a.csv's row wins
    Case("duplicate_ids_name_order_not_landing_order",
         {"z.csv": csv_bytes(r("x1", user="uz")), "a.parquet": parquet_bytes(good_columns(["x1"]))},
         D1, ["x1"], quarantined=[("z.csv", 2, "duplicate_event_id")], data_rows=2,
         values={("x1", "user_id"): "u1"}, files_of_day={"a.parquet": (1, 0), "z.csv": (0, 1)}),
    # a bad first occurrence does not shadow a later valid one
    Case("duplicate_after_bad_first_occurrence",
         {"a.csv": csv_bytes(r("x1", q="0"), r("x1", user="u2"))},
         D1, ["x1"], quarantined=[("a.csv", 2, "bad_quantity")], data_rows=2, values={("x1", "user_id"): "u2"}),
    Case("same_id_on_two_days_allowed",
         {"a.csv": csv_bytes(r("e1"), r("e1", ts="2024-10-02T10:00:00Z"))},
         D1, ["e1"], data_rows=2, other_days={D2: ["e1"]}),
    Case("unknown_event_types",
         {"a.csv": csv_bytes(r("e1", etype="click"), r("e2", etype=""), r("e3", etype="VIEW"),
                             r("e4", etype=" purchase "), r("e5", etype="views"))},
         D1, ["e3", "e4"], quarantined=[("a.csv", 2, "unknown_event_type"), ("a.csv", 3, "unknown_event_type"),
                                        ("a.csv", 6, "unknown_event_type")], data_rows=5,
         values={("e3", "event_type"): "view", ("e4", "event_type"): "purchase"}),
    Case("non_utf8_csv",
         {"a.csv": csv_bytes(r("e1", item="caf\u00e9")).decode().encode("latin-1"), "b.csv": csv_bytes(r("b1"))},
         D1, ["b1"], undated=[("a.csv", None, "unreadable_file")], data_rows=1, detail={"a.csv": "UTF-8"}),
    Case("binary_garbage_csv", {"a.csv": bytes(range(256)) * 4}, D1, [],
         undated=[("a.csv", None, "unreadable_file")], detail={"a.csv": "UTF-8"}),
    Case("garbage_parquet", {"a.parquet": b"PAR1" + bytes(range(200)) + b"PAR1"}, D1, [],
         undated=[("a.parquet", None, "unreadable_file")], detail={"a.parquet": "Parquet"}),
    Case("truncated_parquet", {"a.parquet": TRUNCATED_PARQUET, "b.parquet": GOOD_PARQUET}, D1,
         ["p1", "p2", "p3", "p4"], undated=[("a.parquet", None, "unreadable_file")], data_rows=4,
         detail={"a.parquet": "Parquet"}, files_of_day={"b.parquet": (4, 0)}),
    Case("parquet_wrong_types",
         {"a.parquet": parquet_bytes({**good_columns(["p1"]), "ts": [True]}),
          "b.parquet": parquet_bytes({**good_columns(["p2"]), "quantity": pa.array([[1, 2]], pa.list_(pa.int64()))}),
          "c.parquet": parquet_bytes({**good_columns(["p3"]), "user_id": [1.5]})},
         D1, [], undated=[("a.parquet", None, "unreadable_file"), ("b.parquet", None, "unreadable_file"),
                          ("c.parquet", None, "unreadable_file")],
         detail={"a.parquet": "'ts'", "b.parquet": "'quantity'", "c.parquet": "'user_id'"}),
    # integer ids become text, ms timestamps (naive = UTC), tz-aware Berlin time, int32, decimal, ISO text ts
    Case("parquet_castable_types",
         {"a.parquet": parquet_bytes({
             "event_id": pa.array([7, 8], pa.int64()), "user_id": pa.array([42, 43], pa.int32()),
             "item_id": ["i1", "i2"], "event_type": pa.array(["view", "purchase"]).dictionary_encode(),
             "ts": pa.array([datetime(2024, 10, 1, 10), datetime(2024, 10, 1, 11)], pa.timestamp("ms")),
             "quantity": pa.array([1, 3], pa.int32()),
             "value": pa.array([Decimal("0.50"), Decimal("7.25")], pa.decimal128(6, 2))}),
          "b.parquet": parquet_bytes({
              **good_columns(["b1"]),
              "ts": pa.array([pd.Timestamp("2024-10-01T12:00:00", tz="Europe/Berlin")],
                             pa.timestamp("us", tz="Europe/Berlin"))}),
          "c.parquet": parquet_bytes({**good_columns(["c1", "c2"]),
                                      "ts": ["2024-10-01T12:00:00+02:00", "2024-10-01 13:00:00"]})},
         D1, ["7", "8", "b1", "c1", "c2"], data_rows=5,
         ts={"7": "2024-10-01T10:00:00Z", "8": "2024-10-01T11:00:00Z", "b1": "2024-10-01T10:00:00Z",
             "c1": "2024-10-01T10:00:00Z", "c2": "2024-10-01T13:00:00Z"},
         values={("7", "user_id"): "42", ("8", "quantity"): 3, ("8", "value"): 7.25, ("8", "event_type"): "purchase"}),
    Case("bom_csv", {"a.csv": b"\xef\xbb\xbf" + csv_bytes(r("e1"), r("e2", q="x"))}, D1, ["e1"],
         quarantined=[("a.csv", 3, "bad_quantity")], data_rows=2),
    Case("crlf_line_endings", {"a.csv": csv_bytes(r("e1"), r("", user="u9"), r("e3"), eol="\r\n")}, D1,
         ["e1", "e3"], quarantined=[("a.csv", 3, "missing_id")], data_rows=3, values={("e3", "value"): 0.5}),
    Case("quoted_comma", {"a.csv": csv_bytes(r("e1", item='"a,b"'), r("e2", user='"x, ""quoted"" y"'))}, D1,
         ["e1", "e2"], data_rows=2, values={("e1", "item_id"): "a,b", ("e2", "user_id"): 'x, "quoted" y'}),
    # line 2-3 is one record (quoted newline in a free-text column), so the next record starts on physical line 4
    Case("quoted_newline",
         {"a.csv": csv_bytes(r("e1") + ',"multi\nline"', r("e2", q="-3") + ",x", r("e3") + ',"cr\r\nlf"',
                             r("e4", q="0") + ",y", header=HEADER + ",note")},
         D1, ["e1", "e3"], quarantined=[("a.csv", 4, "bad_quantity"), ("a.csv", 7, "bad_quantity")], data_rows=4),
    # a quoted line end, NUL or TAB inside an id: the HTTP service would refuse the id (422), so ingest does;
    # e1's item spans lines 2-3, e3's user lines 5-6 (CRLF is one line end)
    Case("control_characters_in_ids_csv",
         {"a.csv": csv_bytes(r("e1", item='"multi\nline"'), r("e2", q="-3"), r("e3", user='"cr\r\nlf"'),
                             r("e4\x00"), r("e5", item="i\t5"), r("e6", user="u 6", item="caf\u00e9"))},
         D1, ["e6"], quarantined=[("a.csv", 2, "id_control_character"), ("a.csv", 4, "bad_quantity"),
                                  ("a.csv", 5, "id_control_character"), ("a.csv", 7, "id_control_character"),
                                  ("a.csv", 8, "id_control_character")], data_rows=6,
         values={("e6", "user_id"): "u 6", ("e6", "item_id"): "caf\u00e9"}, files_of_day={"a.csv": (1, 5)}),
    Case("control_characters_in_ids_parquet",
         {"a.parquet": parquet_bytes({**good_columns(["p1", "p2", "p3", "p4", "p5"]),
                                      "event_id": ["p1", "p2\x00", "p3", "p4", "p5"],
                                      "user_id": ["u1", "u1", "u\r", "u1", "u1"],
                                      "item_id": ["i1", "i1", "i1", "\ni", "i\x7f"]})},
         D1, ["p1"], quarantined=[("a.parquet", 2, "id_control_character"), ("a.parquet", 3, "id_control_character"),
                                  ("a.parquet", 4, "id_control_character"), ("a.parquet", 5, "id_control_character")],
         data_rows=5, files_of_day={"a.parquet": (1, 4)}),
    # fields over MAX_CSV_FIELD (131 072 characters) lose only their own row (undated, like a malformed row):
    # line 3 is exactly at the limit (kept), line 4 one over; the quoted field of line 6 holds 50 000 "z,\n"
    # (150 000 characters, 50 000 line ends), so that record spans lines 6-50006 and the next starts on 50007
    Case("field_too_large_csv",
         {"a.csv": csv_bytes(r("e1") + ",short", r("e2") + "," + "x" * 131_072, r("e3") + "," + "y" * 131_073,
                             r("e4") + ",", r("e5") + ',"' + "z,\n" * 50_000 + '"', r("e6", q="0") + ",",
                             r("e7") + ",end", header=HEADER + ",note"),
          "b.csv": csv_bytes(r("b1"))},
         D1, ["e1", "e2", "e4", "e7", "b1"], quarantined=[("a.csv", 50_007, "bad_quantity")],
         undated=[("a.csv", 4, "field_too_large"), ("a.csv", 6, "field_too_large")], data_rows=8,
         files_of_day={"a.csv": (4, 1), "b.csv": (1, 0)}),
    # an oversized id (or ts) field: the row is quarantined for its size, never stored
    Case("field_too_large_in_an_id_and_last_unterminated",
         {"a.csv": csv_bytes(r("e1", user="u" * 200_000) + ",", r("e2") + ",", r("e3") + ',"' + "q" * 140_000,
                             header=HEADER + ",note")},
         D1, ["e2"], undated=[("a.csv", 2, "field_too_large"), ("a.csv", 4, "field_too_large")], data_rows=3),
    # a header field over the limit leaves no columns to read: the whole file is one unreadable row
    Case("field_too_large_in_header",
         {"a.csv": csv_bytes(r("e1"), header=HEADER + "," + "h" * 131_073), "b.csv": csv_bytes(r("b1"))},
         D1, ["b1"], undated=[("a.csv", None, "unreadable_file")], data_rows=1,
         detail={"a.csv": "header line 1: field 8 has 131073 characters, more than the limit of 131072"}),
    Case("blank_lines_skipped", {"a.csv": csv_bytes(r("e1"), "", r("e2", q="0"), "", r("e3"))}, D1, ["e1", "e3"],
         quarantined=[("a.csv", 4, "bad_quantity")], data_rows=3),
    # line 3 has an unquoted comma (8 fields), line 4 only 3 fields: their ts cannot be trusted -> undated
    Case("malformed_rows",
         {"a.csv": csv_bytes(r("e1"), r("e2", item="a,b"), "e3,u1,i1", r("e4"))},
         D1, ["e1", "e4"], undated=[("a.csv", 3, "malformed_row"), ("a.csv", 4, "malformed_row")], data_rows=4),
    Case("sql_like_ids",
         {"a.csv": csv_bytes(r(SQL_ID, user="Robert'); DROP TABLE raw_events;--", item='"1 OR 1=1; --"'))},
         D1, [SQL_ID], data_rows=1,
         values={(SQL_ID, "user_id"): "Robert'); DROP TABLE raw_events;--", (SQL_ID, "item_id"): "1 OR 1=1; --"}),
    Case("leading_zero_ids", {"a.csv": csv_bytes(r("007", user="0042", item="000"))}, D1, ["007"], data_rows=1,
         values={("007", "user_id"): "0042", ("007", "item_id"): "000"}),
    Case("id_too_long",
         {"a.csv": csv_bytes(r("e" * 129), r("e2", user="u" * 128), r("e3", item="i" * 200))},
         D1, ["e2"], quarantined=[("a.csv", 2, "id_too_long"), ("a.csv", 4, "id_too_long")], data_rows=3,
         values={("e2", "user_id"): "u" * 128}),
    Case("file_spanning_three_days",
         {"a.csv": csv_bytes(r("d1a", ts="2024-10-01T00:00:00Z"), r("d2a", ts="2024-10-02T12:00:00Z"),
                             r("d3a", ts="2024-10-03T23:59:59Z"), r("d1b", ts="2024-10-01T23:00:00Z"),
                             r("d2b", ts="2024-10-02T13:00:00+02:00"), r("d3b", ts="2024-10-04T01:00:00+02:00"))},
         D1, ["d1a", "d1b"], data_rows=6, other_days={D2: ["d2a", "d2b"], D3: ["d3a", "d3b"]},
         files_of_day={"a.csv": (2, 0)}),
    Case("good_rows_among_bad_rows",
         {"a.csv": csv_bytes(r("g1"), r("b1", q="-5"), r("g2"), r("b2", etype="like"), r("b3", ts="never"), r("g3"))},
         D1, ["g1", "g2", "g3"], quarantined=[("a.csv", 3, "bad_quantity"), ("a.csv", 5, "unknown_event_type")],
         undated=[("a.csv", 6, "bad_timestamp")], data_rows=6, files_of_day={"a.csv": (3, 2)}),
    Case("unreadable_files_never_fail_others",
         {"a.parquet": TRUNCATED_PARQUET, "b.csv": "x\u00e9".encode("latin-1"),
          "c.csv": csv_bytes("e1,u1", header="event_id,user_id"), "d.csv": csv_bytes(r("d1"), r("d2"))},
         D1, ["d1", "d2"], undated=[("a.parquet", None, "unreadable_file"), ("b.csv", None, "unreadable_file"),
                                    ("c.csv", None, "missing_column")], data_rows=2,
         files_of_day={"d.csv": (2, 0)}),
    Case("ignored_names",
         {".hidden.csv": csv_bytes(r("h1")), "a.csv.tmp": csv_bytes(r("t1")), "b.csv.part": csv_bytes(r("p1")),
          "notes.txt": b"hello", "c.json": b"{}", "good.CSV": csv_bytes(r("g1"))},
         D1, ["g1"], data_rows=1, files_of_day={"good.CSV": (1, 0)}),
]


def _triples(frame: pd.DataFrame) -> list[tuple[str, int | None, str]]:
    lines = [None if pd.isna(x) else int(x) for x in frame["source_line"]]
    return sorted(zip(frame["source_file"], lines, frame["reason"]), key=lambda t: (t[0], t[1] or 0, t[2]))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_case(case: Case, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    for name, data in case.files.items():
        (landing / name).write_bytes(data)
    source = make_source(landing)
    batch = source.fetch_day(case.day)

    # the day's accepted events, in the schema, with the hand-worked values
    assert list(batch.events.columns) == list(EVENT_COLUMNS)
    assert str(batch.events["ts"].dtype) == "datetime64[us, UTC]"
    assert str(batch.events["quantity"].dtype) == "int64" and str(batch.events["value"].dtype) == "float64"
    assert sorted(batch.events["event_id"]) == sorted(case.accepted)
    events = batch.events.set_index("event_id")
    for (eid, column), expected in case.values.items():
        assert events.loc[eid, column] == expected, (eid, column)

    # quarantine of the day and undated rows: file, line and reason, each with the file's sha256
    assert list(batch.quarantined.columns) == list(QUARANTINE_COLUMNS)
    assert list(batch.undated.columns) == list(QUARANTINE_COLUMNS)
    assert _triples(batch.quarantined) == sorted(case.quarantined, key=lambda t: (t[0], t[1] or 0, t[2]))
    assert _triples(batch.undated) == sorted(case.undated, key=lambda t: (t[0], t[1] or 0, t[2]))
    for frame in (batch.quarantined, batch.undated):
        assert set(frame["reason"]) <= set(REASONS)
        for name, sha in zip(frame["source_file"], frame["source_sha256"]):
            assert sha == hashlib.sha256(case.files[name]).hexdigest()
    for name, text in case.detail.items():
        details = batch.undated.loc[batch.undated["source_file"] == name, "detail"].tolist()
        assert len(details) == 1 and name in details[0] and text in details[0], details

    # other days get their rows (and only there)
    all_ts = batch.events.set_index("event_id")["ts"].to_dict()
    total = len(batch.events) + len(batch.quarantined) + int(batch.undated["source_line"].notna().sum())
    expected_days = set(case.other_days) | ({case.day} if case.accepted or case.quarantined else set())
    assert set(source.days()) == expected_days
    for day, ids in case.other_days.items():
        other = source.fetch_day(day)
        assert sorted(other.events["event_id"]) == sorted(ids), day
        assert other.quarantined.empty
        assert _triples(other.undated) == _triples(batch.undated)  # undated rows come with every fetch
        all_ts.update(other.events.set_index("event_id")["ts"].to_dict())
        total += len(other.events)
    for eid, text in case.ts.items():
        assert all_ts[eid] == utc(text), eid

    # no row lost, none counted twice
    assert total == case.data_rows

    if case.files_of_day is not None:
        got = {f.name: (f.rows_accepted, f.rows_quarantined) for f in batch.files}
        assert got == case.files_of_day
        for f in batch.files:
            assert f.sha256 == hashlib.sha256(case.files[f.name]).hexdigest()
            assert f.size_bytes == len(case.files[f.name])


def test_case_count() -> None:
    assert len(CASES) >= 35


def test_missing_landing_directory_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentSourceError, match="nowhere"):
        FolderSource(tmp_path / "nowhere").fetch_day(D1)
    with pytest.raises(PermanentSourceError, match="nowhere"):
        landed_files(tmp_path / "nowhere")
    (tmp_path / "plain.csv").write_bytes(csv_bytes(r("e1")))
    with pytest.raises(PermanentSourceError, match="not a directory"):
        FolderSource(tmp_path / "plain.csv").fetch_day(D1)
    with pytest.raises(PermanentSourceError, match="gone.csv"):
        partitions_touched(tmp_path / "gone.csv")


def test_empty_landing_directory_gives_an_empty_day(tmp_path: Path) -> None:
    batch = make_source(tmp_path).fetch_day(D1)
    assert batch.events.empty and batch.quarantined.empty and batch.undated.empty and batch.files == ()
    assert list(batch.events.columns) == list(EVENT_COLUMNS)


def test_landed_files_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b.parquet", "a.csv", ".a.csv", "c.csv.tmp", "d.parquet.part", "e.txt", "B.CSV"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.csv").mkdir()
    assert [p.name for p in landed_files(tmp_path)] == ["B.CSV", "a.csv", "b.parquet"]


def test_file_spanning_three_days_feeds_each_and_partitions_touched(tmp_path: Path) -> None:
    data = csv_bytes(r("a", ts="2024-10-01T05:00:00Z"), r("b", ts="2024-10-02T05:00:00Z"),
                     r("c", q="0", ts="2024-10-02T06:00:00Z"),
                     r("d", ts="2024-10-03T05:00:00Z"), r("e", q="0", ts="2024-10-04T05:00:00Z"),
                     r("f", ts="2030-01-01T00:00:00Z"))
    (tmp_path / "span.csv").write_bytes(data)
    source = make_source(tmp_path)
    sha = hashlib.sha256(data).hexdigest()
    expected = {D1: (["a"], 1, 0), D2: (["b"], 1, 1), D3: (["d"], 1, 0), date(2024, 10, 4): ([], 0, 1)}
    for day, (ids, accepted, quarantined) in expected.items():
        batch = source.fetch_day(day)
        assert sorted(batch.events["event_id"]) == ids
        assert batch.files == (FileIngest("span.csv", sha, len(data), accepted, quarantined),)
        assert _triples(batch.undated) == [("span.csv", 7, "ts_in_future")]
    # 10-04 has only a quarantined row but still changes (its quarantine); the future row touches no day
    assert partitions_touched(tmp_path / "span.csv", now=NOW) == {D1, D2, D3, date(2024, 10, 4)}


def test_parsed_files_are_cached_and_change_is_noticed(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    real = folder._parse_bytes

    def counting(name: str, data: bytes):
        calls.append(name)
        return real(name, data)

    monkeypatch.setattr(folder, "_parse_bytes", counting)
    (tmp_path / "a.csv").write_bytes(csv_bytes(r("e1")))
    (tmp_path / "b.parquet").write_bytes(GOOD_PARQUET)
    source = make_source(tmp_path)
    for i in range(60):
        source.fetch_day(D1 + timedelta(days=i % 3))
    assert sorted(calls) == ["a.csv", "b.parquet"]
    make_source(tmp_path).fetch_day(D1)  # a new instance in the same process uses the cache too
    assert len(calls) == 2

    path = tmp_path / "a.csv"
    stat = path.stat()
    path.write_bytes(csv_bytes(r("e9")))  # same size, new content and mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    batch = source.fetch_day(D1)
    assert calls.count("a.csv") == 2
    assert "e9" in set(batch.events["event_id"]) and "e1" not in set(batch.events["event_id"])
    assert {f.name: f.sha256 for f in batch.files}["a.csv"] == hashlib.sha256(csv_bytes(r("e9"))).hexdigest()


def test_future_row_is_accepted_once_its_time_has_come(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(csv_bytes(r("e1", ts="2024-10-10T13:00:00Z")))
    clock = [NOW]
    source = FolderSource(tmp_path, clock=lambda: clock[0])
    first = source.fetch_day(date(2024, 10, 10))
    assert first.events.empty and _triples(first.undated) == [("a.csv", 2, "ts_in_future")]
    clock[0] = NOW + timedelta(hours=1)  # same cached parse, new clock
    second = source.fetch_day(date(2024, 10, 10))
    assert list(second.events["event_id"]) == ["e1"] and second.undated.empty


def test_sql_like_id_round_trips_through_the_warehouse(tmp_path: Path) -> None:
    data = csv_bytes(
        r(SQL_ID, user="Robert'); DROP TABLE raw_events;--"), r("ok"), r("bad", q="0"), r("undated", ts="?")
    )
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "a.csv").write_bytes(data)
    batch = make_source(tmp_path / "landing").fetch_day(D1)
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    warehouse.ensure_schema(con)
    warehouse.write_raw_partition(con, D1, batch.events, batch.quarantined, batch.undated, batch.files)
    warehouse.write_raw_partition(con, D1, batch.events, batch.quarantined, batch.undated, batch.files)  # rewrite
    back = warehouse.read_raw_partition(con, D1)
    assert sorted(back["event_id"]) == sorted([SQL_ID, "ok"])
    assert back.set_index("event_id").loc[SQL_ID, "user_id"] == "Robert'); DROP TABLE raw_events;--"
    assert con.execute("SELECT count(*) FROM raw_events").fetchone()[0] == 2  # the table still exists
    assert con.execute(
        "SELECT reason, source_line FROM raw_events_quarantine ORDER BY source_line"
    ).fetchall() == [("bad_quantity", 4), ("bad_timestamp", 5)]
    log = con.execute("SELECT file_name, rows_accepted, rows_quarantined FROM ingestion_log").fetchall()
    assert log == [("a.csv", 2, 1)]
    con.close()


def test_undated_rows_are_stored_once_across_days(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "a.parquet").write_bytes(TRUNCATED_PARQUET)
    (tmp_path / "landing" / "b.csv").write_bytes(csv_bytes(r("e1"), r("e2", ts="2024-10-02T00:00:00Z"), r("x", ts="")))
    source = make_source(tmp_path / "landing")
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    warehouse.ensure_schema(con)
    for day in (D1, D2, D1):
        batch = source.fetch_day(day)
        warehouse.write_raw_partition(con, day, batch.events, batch.quarantined, batch.undated, batch.files)
    rows = con.execute(
        "SELECT source_file, source_line, reason FROM raw_events_quarantine WHERE partition_day IS NULL ORDER BY 1"
    ).fetchall()
    assert rows == [("a.parquet", None, "unreadable_file"), ("b.csv", 4, "bad_timestamp")]
    con.close()


def _oversized_file() -> bytes:
    """Line 2 fine, line 3 a note of 131 072 characters (the limit), line 4 one of 131 073, line 5 fine."""
    return csv_bytes(r("e1") + ",a", r("e2") + "," + "x" * 131_072, r("e3") + "," + "y" * 131_073, r("e4") + ",b",
                     header=HEADER + ",note")


def test_field_too_large_detail_names_file_line_field_and_size(tmp_path: Path) -> None:
    assert MAX_CSV_FIELD == 131_072 and "field_too_large" in REASONS
    (tmp_path / "big.csv").write_bytes(_oversized_file())
    batch = make_source(tmp_path).fetch_day(D1)
    assert sorted(batch.events["event_id"]) == ["e1", "e2", "e4"]
    row = batch.undated.iloc[0]
    assert len(batch.undated) == 1 and (row["reason"], row["source_line"]) == ("field_too_large", 4)
    assert row["detail"] == "big.csv: line 4: field 8 ('note') has 131073 characters, more than the limit of 131072"
    assert all(row[c] is None for c in EVENT_COLUMNS)  # the oversized record is not stored
    assert batch.files == (FileIngest("big.csv", hashlib.sha256(_oversized_file()).hexdigest(),
                                      len(_oversized_file()), 3, 0),)


def test_field_limit_holds_when_the_process_raised_csv_limit(tmp_path: Path) -> None:
    # another library may raise csv's process-wide limit; the per-field limit of the landing folder stays
    (tmp_path / "big.csv").write_bytes(_oversized_file())
    old = csv.field_size_limit(10**9)
    try:
        batch = make_source(tmp_path).fetch_day(D1)
    finally:
        csv.field_size_limit(old)
    assert sorted(batch.events["event_id"]) == ["e1", "e2", "e4"]
    assert _triples(batch.undated) == [("big.csv", 4, "field_too_large")]
    assert batch.undated["detail"].tolist() == [
        "big.csv: line 4: field 8 ('note') has 131073 characters, more than the limit of 131072"
    ]


def test_control_character_ids_are_quarantined_and_stored(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "a.parquet").write_bytes(
        parquet_bytes({**good_columns(["ok", "nul\x00", "lf"]), "user_id": ["u1", "u1", "u\n2"]})
    )
    batch = make_source(tmp_path / "landing").fetch_day(D1)
    assert list(batch.events["event_id"]) == ["ok"]
    details = dict(zip(batch.quarantined["source_line"].astype(int), batch.quarantined["detail"]))
    assert details == {2: "event_id contains a control character (NUL)", 3: "user_id contains a control character (LF)"}
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    warehouse.ensure_schema(con)
    warehouse.write_raw_partition(con, D1, batch.events, batch.quarantined, batch.undated, batch.files)
    assert con.execute(
        "SELECT source_line, reason, event_id, user_id FROM raw_events_quarantine ORDER BY source_line"
    ).fetchall() == [(2, "id_control_character", "nul\x00", "u1"), (3, "id_control_character", "lf", "u\n2")]
    assert con.execute("SELECT event_id FROM raw_events").fetchall() == [("ok",)]
    con.close()


def _links(tmp_path: Path) -> tuple[Path, Path]:
    """A landing folder with one real file and four links; a "system file" and a directory outside it."""
    outside, landing = tmp_path / "etc", tmp_path / "landing"
    outside.mkdir()
    landing.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    (outside / "good.csv").write_bytes(csv_bytes(r("s1")))
    (outside / "dir.csv").mkdir()
    (landing / "real.csv").write_bytes(csv_bytes(r("e1")))
    try:
        (landing / "passwd.csv").symlink_to(outside / "passwd")  # to a file outside the folder
        (landing / "good.csv").symlink_to(outside / "good.csv")  # a valid landed file, but outside
        (landing / "inside.csv").symlink_to(landing / "real.csv")  # to a file inside the folder
        (landing / "dir.csv").symlink_to(outside / "dir.csv", target_is_directory=True)
    except (OSError, NotImplementedError) as exc:
        pytest.skip(f"cannot create symbolic links here: {exc}")
    return landing, outside


def test_symbolic_links_are_ignored_and_logged_once(tmp_path: Path, caplog) -> None:
    landing, outside = _links(tmp_path)
    caplog.set_level(logging.WARNING, logger="factory_assets.data.sources.folder")
    assert [p.name for p in landed_files(landing)] == ["real.csv"]
    source = make_source(landing)
    data = csv_bytes(r("e1"))
    for _ in range(2):
        batch = source.fetch_day(D1)
        assert list(batch.events["event_id"]) == ["e1"]  # not s1, and e1 once (no duplicate through inside.csv)
        assert batch.quarantined.empty and batch.undated.empty
        assert batch.files == (FileIngest("real.csv", hashlib.sha256(data).hexdigest(), len(data), 1, 0),)
    assert source.days() == [D1]
    warned = [rec.getMessage() for rec in caplog.records if rec.name == "factory_assets.data.sources.folder"]
    assert len(warned) == 4  # once per link, however often the folder is listed
    for name, target in [("passwd.csv", outside / "passwd"), ("good.csv", outside / "good.csv"),
                         ("inside.csv", landing / "real.csv"), ("dir.csv", outside / "dir.csv")]:
        assert sum(f"{name!r}" in m and "symbolic link" in m and str(target) in m for m in warned) == 1, name
    assert not any("root:x" in m for m in warned)
    with pytest.raises(PermanentSourceError, match="symbolic link"):
        partitions_touched(landing / "passwd.csv", now=NOW)


def test_a_file_swapped_for_a_link_after_listing_is_not_read(tmp_path: Path, monkeypatch) -> None:
    landing, _ = _links(tmp_path)
    read: list[str] = []
    real = folder._parse_bytes
    monkeypatch.setattr(folder, "_parse_bytes", lambda name, data: read.append(name) or real(name, data))
    # as if passwd.csv was a regular file when the folder was listed and became a link before it was read
    monkeypatch.setattr(folder, "landed_files", lambda path: [landing / "passwd.csv", landing / "real.csv"])
    with pytest.raises(TransientSourceError, match="symbolic link"):
        make_source(landing).fetch_day(D1)
    assert read == []


# ---------------------------------------------------------------------------------------------------------
# Fault injection


class _Counting(EventSource):
    name = "counting"
    window_days = 14

    def __init__(self, inner: EventSource) -> None:
        self.inner = inner
        self.calls: dict[date, int] = {}

    def fetch_day(self, day: date) -> DayBatch:
        self.calls[day] = self.calls.get(day, 0) + 1
        return self.inner.fetch_day(day)


def _forty_days(tmp_path: Path) -> tuple[FolderSource, list[date]]:
    days = [D1 + timedelta(days=i) for i in range(40)]
    rows = [r(f"e{i}", ts=f"{d.isoformat()}T08:00:00Z") for i, d in enumerate(days)]
    rows += [r(f"f{i}", ts=f"{d.isoformat()}T09:00:00Z") for i, d in enumerate(days)]
    (tmp_path / "forty.csv").write_bytes(csv_bytes(*rows))
    return FolderSource(tmp_path, clock=lambda: datetime(2025, 1, 1, tzinfo=timezone.utc)), days


def test_flaky_source_fails_a_plausible_share_and_retries_read_inner_exactly_once(tmp_path: Path) -> None:
    inner, days = _forty_days(tmp_path)
    counting = _Counting(inner)
    flaky = FlakySource(counting, failure_rate=0.3, seed=7)
    assert flaky.name == "counting" and flaky.window_days == 14
    first_failures = 0
    for day in days:
        attempts = 0
        while True:
            attempts += 1
            try:
                batch = flaky.fetch_day(day)
                break
            except TransientSourceError as exc:
                assert day.isoformat() in str(exc)
                assert attempts < 20
        first_failures += attempts > 1
        pd.testing.assert_frame_equal(batch.events, inner.fetch_day(day).events)
        assert len(batch.events) == 2
    # Binomial(40, 0.3): mean 12, sd 2.9; [3, 22] is beyond 3 sd either side
    assert 3 <= first_failures <= 22
    assert flaky.failures == flaky.calls - 40 and flaky.failures >= first_failures
    assert counting.calls == {day: 1 for day in days}  # failures never touch the inner source

    # deterministic: the same seed gives the same pattern, another seed another one
    def pattern(seed: int) -> list[bool]:
        f = FlakySource(_Counting(inner), failure_rate=0.3, seed=seed)
        out = []
        for day in days:
            try:
                f.fetch_day(day)
                out.append(False)
            except TransientSourceError:
                out.append(True)
        return out

    assert pattern(7) == pattern(7) and pattern(7) != pattern(8)
    assert sum(pattern(7)) == first_failures


def test_flaky_source_edge_rates(tmp_path: Path) -> None:
    inner, days = _forty_days(tmp_path)
    never = FlakySource(inner, failure_rate=0.0, seed=1)
    assert all(len(never.fetch_day(d).events) == 2 for d in days[:5]) and never.failures == 0
    with pytest.raises(ValueError):
        FlakySource(inner, failure_rate=1.0, seed=1)
    assert FlakySource(inner, 0.3, 1).describe()["source"] == "folder"


def test_broken_source_is_permanent(tmp_path: Path) -> None:
    inner = make_source(tmp_path)
    broken = BrokenSource(inner)
    assert broken.name == "folder" and broken.window_days == 28
    with pytest.raises(PermanentSourceError, match="2024-10-01"):
        broken.fetch_day(D1)
    with pytest.raises(PermanentSourceError):
        BrokenSource().fetch_day(D2)
