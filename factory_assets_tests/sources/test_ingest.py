"""The fused store path (factory_assets.data.ingest.ingest_day) against the two-step path it replaces
(validate_events, then warehouse.write_raw_partition): the same stored rows, in the same order, the same
quarantine, log and ledger, the same data version and metadata; atomic on failure."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from factory_assets.data import ingest, maintenance, warehouse
from factory_assets.data.ingest import ingest_day
from factory_assets.data.sources.base import DayBatch, FileIngest
from factory_assets.data.sources.schema import EVENT_COLUMNS, concat_quarantine, empty_quarantine, validate_events
from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets_tests.sources import test_folder, test_schema

DAY = test_schema.DAY  # 2024-10-02


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    warehouse.ensure_schema(con)
    maintenance.ensure_schema(con)
    return con


def _two_step(con, day: date, batch: DayBatch) -> dict:
    """What the raw_events asset did before ingest_day, with its metadata."""
    accepted, rejected = validate_events(batch.events, day)
    quarantined = pd.concat([batch.quarantined, rejected], ignore_index=True)
    version = warehouse.write_raw_partition(con, day, accepted, quarantined, batch.undated, batch.files)
    by_type = accepted["event_type"].value_counts().sort_index()
    return {
        "data_version": version, "accepted": len(accepted), "quarantined": len(quarantined),
        "undated": len(batch.undated), "quarantine_by_reason": warehouse.quarantine_summary(con, day),
        "events_by_type": {k: int(v) for k, v in by_type.items()},
        "distinct_users": int(accepted["user_id"].nunique()), "distinct_items": int(accepted["item_id"].nunique()),
        "preview": accepted.head(5),
    }


def _tables(con) -> dict[str, pd.DataFrame]:
    """Every stored row, in storage (rowid) order; the log without its clock."""
    return {
        "raw": con.execute(f"SELECT * FROM {warehouse.RAW_EVENTS} ORDER BY rowid").df(),
        "quarantine": con.execute(f"SELECT * FROM {warehouse.QUARANTINE} ORDER BY rowid").df(),
        "log": con.execute(f"SELECT * EXCLUDE (ingested_at) FROM {warehouse.INGESTION_LOG} ORDER BY ALL").df(),
        "ledger": con.execute(f"SELECT * EXCLUDE (written_at) FROM {warehouse.LEDGER} ORDER BY ALL").df(),
    }


def _assert_same(day: date, batch: DayBatch, days: tuple[date, ...] = ()) -> ingest.IngestResult:
    """Both paths on fresh warehouses (after ``days`` written by both the same way) agree exactly."""
    old, new = _con(), _con()
    for d in days:
        _two_step(old, d, batch)
        ingest_day(new, d, batch)
    expected = _two_step(old, day, batch)
    got = ingest_day(new, day, batch)
    for name, frame in _tables(old).items():
        pd.testing.assert_frame_equal(_tables(new)[name], frame, obj=name)
    pd.testing.assert_frame_equal(got.preview, expected.pop("preview"))
    assert {k: getattr(got, k) for k in expected} == expected
    assert got.day == day and got.files == tuple(batch.files)
    return got


def _frame_with(rows: list[tuple], **columns) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["source_line", *EVENT_COLUMNS])
    for k, v in columns.items():
        frame[k] = v
    return frame


# ------------------------------------------------------------------------------------------------- bad input
BAD_FRAMES = {
    "every_reason": lambda: test_schema.crafted().assign(source_sha256="ab" * 32),
    "control_characters": lambda: pd.DataFrame({
        "event_id": ["ok1", "ok2", "nul\x00", "e4", "e5", "e6", "e7", "e8", "e9", "e10", "\n", "e\x85"],
        "user_id": ["u 1", 'u"2', "u", "u\r", "u", "line\r\nend", "u", "u\x1b[31m", "u", "u\x85", "u", "u"],
        "item_id": ["caf\u00e9", "i2", "i", "i", "i\n5", "i", "\ttab", "i", "i\x7f", "i", "i", "i"],
        "event_type": "view", "ts": "2024-10-02T10:00:00Z", "quantity": 1, "value": 0.0,
        "source_line": range(1, 13)}),
    "integer_ids_all_rejected": lambda: pd.DataFrame(
        {"event_id": [None, ""], "user_id": [5, 6], "item_id": [7, 8], "event_type": "view",
         "ts": "2024-10-02T10:00:00Z", "quantity": 1, "value": 0.0}),
    "integer_ids_accepted": lambda: pd.DataFrame(
        {"event_id": [2, 1], "user_id": [5, 6], "item_id": [7, 8], "event_type": " VIEW ",
         "ts": "2024-10-02T10:00:00Z", "quantity": 1.0, "value": 0}),
    "duplicates_unsorted": lambda: _frame_with(
        [(i + 1, eid, "u", "i", "view", "2024-10-02T10:00:00Z", q, 0.0)
         for i, (eid, q) in enumerate([("b", 0), ("a", 1), ("b", 1), ("c", 1), ("a", 1), ("b", 2)])]),
    "unicode_whitespace_and_ties": lambda: _frame_with(
        [(i + 1, eid, "u", "i", "view", "2024-10-02T10:00:00Z", 1, 0.0)
         for i, eid in enumerate(["\u3000", "\xa0 ", "z", "y", "\u00e9", " x"])]),
    "unsorted_times_and_types": lambda: _frame_with(
        [(1, "e1", "u1", "i1", "Purchase", "2024-10-02T23:00:00Z", "3", "9.5"),
         (2, "e2", "u2", "i1", "view", "2024-10-02T01:00:00+02:00", 1, 0.0),
         (3, "e3", "u1", "i2", "add_to_cart ", "2024-10-02T05:00:00", 1, "x"),
         (4, "e0", "u3", "i3", "rating", "2024-10-02T05:00:00Z", 1, 4.0),
         (5, "e5", "u3", "i3", "like", "2024-10-02T05:00:00Z", 1, 4.0),
         (6, "e6", "u3", "i3", "return", "0001-01-01T00:00:00Z", 1, 4.0),
         (7, "e7", "u3", "i3", "return", "2024-10-02T04:59:59.999999Z", 2, -4.0)]),
    "aware_datetime_column": lambda: pd.DataFrame(
        {"event_id": ["a", "b", "c"], "user_id": "u", "item_id": "i", "event_type": "view",
         "ts": pd.to_datetime(["2024-10-02T01:00", "2024-10-02T03:00", "2024-10-01T12:00"]).tz_localize("Europe/Paris"),
         "quantity": np.array([1, 2, 3]), "value": np.array([0.5, np.nan, 1.0])}),
    "empty": lambda: pd.DataFrame(columns=list(EVENT_COLUMNS)),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_same_as_two_step_on_bad_input(name: str) -> None:
    frame = BAD_FRAMES[name]()
    source_rows = concat_quarantine([empty_quarantine()])
    batch = DayBatch(events=frame, quarantined=source_rows)
    _assert_same(DAY, batch)
    _assert_same(DAY, batch, days=(DAY,))  # a rewrite of the day replaces it the same way


def test_same_with_source_quarantine_undated_rows_and_files() -> None:
    events = test_schema.crafted()
    source_q = pd.DataFrame({**{c: ["x"] for c in EVENT_COLUMNS}, "reason": ["negative_quantity"],
                             "detail": ["quantity=-1"], "source_file": ["a.csv"], "source_line": [3],
                             "source_sha256": ["cd" * 32]})
    undated = source_q.assign(reason="bad_timestamp", detail="ts=x", source_line=9)
    files = (FileIngest("a.csv", "cd" * 32, 1234, 5, 1), FileIngest("b.csv", "ef" * 32, 99, 0, 0))
    batch = DayBatch(events=events, quarantined=concat_quarantine([source_q]), undated=concat_quarantine([undated]),
                     files=files)
    got = _assert_same(DAY, batch, days=(date(2024, 10, 1),))
    assert got.undated == 1 and got.quarantine_by_reason["negative_quantity"] == 1


@pytest.mark.parametrize("case", test_folder.CASES, ids=[c.id for c in test_folder.CASES])
def test_same_as_two_step_on_the_folder_bad_input_suite(case, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    for name, data in case.files.items():
        (landing / name).write_bytes(data)
    batch = test_folder.make_source(landing).fetch_day(case.day)
    got = _assert_same(case.day, batch)
    assert got.accepted == len(case.accepted)


# ------------------------------------------------------------------------------------------------- simulator
def _simulator_day(day: date = DAY) -> DayBatch:
    return ShopSimulator(seed=5, n_users=300, n_items=80, events_per_day=20_000).fetch_day(day)


def test_same_as_two_step_on_a_simulator_day() -> None:
    batch = _simulator_day()
    got = _assert_same(DAY, batch, days=(date(2024, 10, 1),))
    assert got.accepted == len(batch.events) and got.quarantined == 0
    assert set(got.events_by_type) <= {"view", "add_to_cart", "purchase"}


def test_same_on_a_shuffled_simulator_day_with_bad_rows() -> None:
    events = _simulator_day().events.sample(frac=1.0, random_state=1).reset_index(drop=True)
    bad = events.head(50).copy()
    bad.loc[bad.index[:10], "quantity"] = 0
    bad.loc[bad.index[10:20], "user_id"] = "u\t"
    bad.loc[bad.index[20:30], "ts"] = pd.Timestamp("2024-10-05", tz="UTC")
    events = pd.concat([events, bad], ignore_index=True)  # the 20 untouched rows are duplicates
    events["source_line"] = np.arange(1, len(events) + 1)
    got = _assert_same(DAY, DayBatch(events=events))
    assert got.quarantine_by_reason == {"bad_quantity": 10, "duplicate_event_id": 20, "id_control_character": 10,
                                        "ts_outside_partition": 10}


# ------------------------------------------------------------------------------------------------- atomicity
def test_failure_rolls_back_and_the_previous_version_stays(monkeypatch) -> None:
    con = _con()
    first = ingest_day(con, DAY, _simulator_day())
    before = _tables(con)

    def boom(*args, **kwargs):
        raise duckdb.ConversionException("injected failure after the insert")

    monkeypatch.setattr(warehouse, "insert_ingestion_log", boom)
    other = DayBatch(events=test_schema.crafted())
    with pytest.raises(duckdb.ConversionException):
        ingest_day(con, DAY, other)
    for name, frame in _tables(con).items():
        pd.testing.assert_frame_equal(frame, before[name], obj=name)
    assert warehouse.partition_data_version(con, DAY) == first.data_version
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name LIKE '\\_%' ESCAPE '\\'").fetchall()[0][0] == 0


def test_missing_column_writes_nothing() -> None:
    con = _con()
    with pytest.raises(ValueError, match="value"):
        ingest_day(con, DAY, DayBatch(events=test_schema.crafted().drop(columns=["value"])))
    assert all(frame.empty for frame in _tables(con).values())


def test_empty_day_is_recorded_as_complete() -> None:
    con = _con()
    got = ingest_day(con, DAY, DayBatch(events=pd.DataFrame(columns=list(EVENT_COLUMNS))))
    assert got.accepted == 0 and got.events_by_type == {} and got.preview.empty
    assert warehouse.ledger(con, warehouse.RAW_EVENTS, DAY, DAY)["row_count"].tolist() == [0]


# ------------------------------------------------------------------------------------------------- erasure
def test_erase_user_gives_the_writers_version_of_the_remaining_rows() -> None:
    batch = _simulator_day()
    con = _con()
    ingest_day(con, DAY, batch)
    user = batch.events["user_id"].iloc[0]
    out = maintenance.erase_user(con, user, "test")
    without = DayBatch(events=batch.events[batch.events["user_id"] != user].reset_index(drop=True))
    fresh = ingest_day(_con(), DAY, without)
    assert out["days"] == {DAY.isoformat(): fresh.data_version}
    ledger = warehouse.ledger(con, warehouse.RAW_EVENTS, DAY, DAY)
    assert ledger["data_version"].tolist() == [fresh.data_version]
    assert ledger["row_count"].tolist() == [fresh.accepted]
    assert out["rows_deleted"] == len(batch.events) - fresh.accepted > 0


def test_same_on_an_in_order_simulator_day_with_bad_rows_in_place() -> None:
    # still in (ts, event_id) order with distinct ids: the fused statement runs, then the stages for the rest
    events = _simulator_day().events.copy()
    assert ingest._in_order_without_duplicates(ingest.prepare_rows(events, DAY))
    events.loc[5:9, "quantity"] = 0
    events.loc[20:22, "item_id"] = "i\x00"
    events.loc[30:31, "event_type"] = " View "
    events.loc[40, "value"] = np.inf
    events.loc[50, "user_id"] = None
    got = _assert_same(DAY, DayBatch(events=events.assign(source_file="sim", source_line=np.arange(len(events)))))
    assert got.quarantine_by_reason == {"bad_quantity": 5, "bad_value": 1, "id_control_character": 3, "missing_id": 1}
    assert got.accepted == len(events) - 10


# ------------------------------------------------------------------------------------------------- proven-clean path
def _arrow_text(frame: pd.DataFrame, kind=None) -> pd.DataFrame:
    """``frame`` with Arrow-backed text columns (``pd.ArrowDtype(kind)``, default ``pa.string()``)."""
    import pyarrow as pa

    dtype = pd.ArrowDtype(kind if kind is not None else pa.string())
    return frame.astype({c: dtype for c in ("event_id", "user_id", "item_id", "event_type")})


def test_a_simulator_day_takes_the_proven_clean_bulk_insert() -> None:
    events = _simulator_day().events
    assert ingest._proven_clean(_con(), events, DAY) is not None
    assert ingest._proven_clean(_con(), events, date(2024, 10, 3)) is None  # every ts outside that day
    got = _assert_same(DAY, DayBatch(events=events), days=(DAY,))
    assert got.accepted == len(events) and got.preview["event_id"].tolist() == events["event_id"].head(5).tolist()


def _spoil(name: str, events: pd.DataFrame) -> pd.DataFrame:
    events = _arrow_text(events) if name.endswith("_arrow") else events.copy()
    name = name.removesuffix("_arrow")
    if name == "space_first":
        events.loc[3, "user_id"] = " u1"
    elif name == "blank":
        events.loc[3, "item_id"] = " "
    elif name == "empty":
        events.loc[3, "item_id"] = ""
    elif name == "null":
        events.loc[3, "user_id"] = None
    elif name == "control":
        events.loc[3, "event_id"] = events.loc[3, "event_id"] + "\x7f"
    elif name == "non_ascii":
        events.loc[3, "item_id"] = "caf\u00e9"
    elif name == "too_long":
        events.loc[3, "item_id"] = "i" * 300
    elif name == "type_spelling":
        events.loc[3, "event_type"] = "View"
    elif name == "unknown_type":
        events.loc[3, "event_type"] = "like"
    elif name == "ts_outside":
        events.loc[len(events) - 1, "ts"] = pd.Timestamp("2024-10-03", tz="UTC")
    elif name == "ts_back":
        events.loc[3, "ts"] = events.loc[0, "ts"] - pd.Timedelta(seconds=1)
    elif name == "quantity":
        events.loc[3, "quantity"] = 0
    elif name == "value":
        events.loc[3, "value"] = np.nan
    elif name == "duplicate":
        events.loc[4, "event_id"] = events.loc[3, "event_id"]
    elif name == "id_order":
        events.loc[3, "event_id"] = "sim-0"
    return events


SPOILED = ["space_first", "blank", "empty", "null", "control", "non_ascii", "too_long", "type_spelling",
           "unknown_type", "ts_outside", "ts_back", "quantity", "value", "duplicate", "id_order"]


@pytest.mark.parametrize("name", SPOILED + [f"{name}_arrow" for name in SPOILED])
def test_one_spoiled_row_leaves_the_proven_clean_path_with_the_same_result(name: str) -> None:
    events = _spoil(name, _simulator_day().events)
    assert ingest._proven_clean(_con(), events, DAY) is None
    _assert_same(DAY, DayBatch(events=events))


def test_the_proven_clean_path_on_arrow_text_types_and_sliced_input() -> None:
    import pyarrow as pa

    events = _simulator_day().events  # object text of str
    for frame in (_arrow_text(events), _arrow_text(events, pa.large_string()),
                  events.astype({"user_id": "string[pyarrow]"}),
                  _arrow_text(events).iloc[100:300].reset_index(drop=True), events.iloc[100:300]):
        assert ingest._proven_clean(_con(), frame, DAY) is not None
        _assert_same(DAY, DayBatch(events=frame))
    # object text holding a non-str value, or a nanosecond ts: the general path, same result
    numbered = events.assign(item_id=[7] + events["item_id"].tolist()[1:])
    for frame in (numbered, events.astype({"ts": "datetime64[ns, UTC]"})):
        assert ingest._proven_clean(_con(), frame, DAY) is None
        _assert_same(DAY, DayBatch(events=frame))


def test_the_proven_clean_path_needs_insertion_order_preserved() -> None:
    con = _con()
    con.execute("SET preserve_insertion_order = false")
    assert ingest._proven_clean(con, _simulator_day().events, DAY) is None


def test_arrow_text_with_missing_values_quarantines_like_object_text() -> None:
    frame = BAD_FRAMES["every_reason"]()
    text = frame.astype({c: object for c in ("event_id", "user_id", "item_id", "event_type")})
    arrow = _arrow_text(text)
    assert arrow[["event_id", "user_id", "item_id", "event_type"]].isna().any().any()
    arrow_got = _assert_same(DAY, DayBatch(events=arrow))
    object_got = _assert_same(DAY, DayBatch(events=text))
    assert arrow_got.quarantine_by_reason == object_got.quarantine_by_reason
    pd.testing.assert_frame_equal(validate_events(arrow, DAY)[1], validate_events(text, DAY)[1])
