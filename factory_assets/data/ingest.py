"""Ingest one UTC day of a source's batch into the warehouse: validate and store in one DuckDB transaction.

:func:`ingest_day` is the store path of the ``raw_events`` asset (source -> committed ``raw_events``
partition).  It gives exactly the accepted rows and quarantine rows of
:func:`~factory_assets.data.sources.validation.validate_events` followed by
:func:`~factory_assets.data.warehouse.write_raw_partition` (the same steps of the validation module, the
same data version), without building the accepted frame in pandas:

0. *Proven clean* (:func:`_proven_clean`): when the batch has typed columns (Arrow-backed text, like the
   simulator's, ``ts`` ``datetime64[us, UTC]``, int64 ``quantity``, float64 ``value``), a few bulk tests
   (numpy over the Arrow buffers and ``pyarrow.compute``; no per-row Python) may prove that every row passes
   every check and that input order is the ``(ts, event_id)`` order without a repeated ``event_id``.  Then
   the rows are stored by DuckDB's plain bulk insert of the columns as an Arrow table (no copy), in one
   transaction with the same delete, quarantine (the source's own rows only), log, version and ledger
   steps as below; the preview is the first rows of the input.  Any test failing sends the batch down the
   general path, which decides row by row - so both give the same rows, quarantine and version.
1. *Prepare* the batch's columns (:func:`~.validation.prepare_rows`, vectorised, ids kept as the same
   ``str`` objects) - before the transaction, nothing is written if a column is missing.
2. In one transaction on the warehouse connection: delete the day, then store the rows that pass the checks
   of :func:`~.validation.validate_events` straight from the registered frame:

   * *fused* (one statement), when the input is already in ``(ts, event_id)`` order with strictly increasing
     ``event_id`` (sources that number their events in time order, like the simulator; a numpy test, no
     sort): ``INSERT INTO raw_events SELECT ... FROM (<checks over the frame>) WHERE stage = 0 ORDER BY
     pos``.  No duplicate is possible, so the checks are all per row.  Only when fewer rows were inserted
     than read is the checks query run again to number the failed rows for the quarantine;
   * *two statements* otherwise: the checks query (:func:`~.validation.check_rows`: a stage number per row,
     then duplicates by a window), then ``INSERT ... WHERE stage = 0 ORDER BY <(ts, event_id) rank>``.

   Then the quarantine (the source's rows of the day, then the rejected rows with the reason codes and
   detail texts of ``validate_events``, built in pandas for the rejected rows only), the undated rows, the
   ingestion log, the data version (:func:`~factory_assets.data.warehouse.partition_data_version`, over the
   stored rows), the ledger row (:func:`~factory_assets.feature_store.contract.record_partition`), then
   commit.  Any error rolls back: the previous version of the day stays.

SQL values are parameters; table and view names come from this module and the warehouse module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from factory_assets.data import warehouse
from factory_assets.data.sources.base import DayBatch, FileIngest
from factory_assets.data.sources.schema import EVENT_COLUMNS, EVENT_TYPES, MAX_ID_LENGTH, MAX_QUANTITY, concat_quarantine, empty_events, empty_quarantine
from factory_assets.data.sources.validation import (
    CHECKED_ROWS_SQL,
    ID_COLUMNS,
    CheckedRows,
    PreparedRows,
    check_parameters,
    accepted_order,
    check_rows,
    event_frame,
    is_arrow_text,
    prepare_rows,
    quarantine_frame,
)
from factory_assets.feature_store import storage
from factory_assets.feature_store.contract import RAW_EVENTS, record_partition

__all__ = ["IngestResult", "PREVIEW_ROWS", "ingest_day"]

#: Accepted events kept in :attr:`IngestResult.preview`.
PREVIEW_ROWS = 5
_VIEW = "_ingest_rows"
_DAY_US = 86_400_000_000
# identifiers from code; the day and the event type names are parameters
_INSERT_SQL = (
    f"INSERT INTO {{into}} SELECT $day::DATE, event_id, user_id, item_id, ($types::VARCHAR[])[etype], "
    f"make_timestamptz(ts_us), quantity::BIGINT, value FROM {_VIEW} WHERE stage = 0 ORDER BY {{order}}"
)
# on the stored day (dictionary-compressed columns: cheaper than on the frame's Python strings)
_DISTINCT_SQL = f"SELECT count(DISTINCT user_id), count(DISTINCT item_id) FROM {RAW_EVENTS} WHERE partition_day = ?"
_BY_TYPE_SQL = f"SELECT event_type, count(*) FROM {RAW_EVENTS} WHERE partition_day = ? GROUP BY event_type ORDER BY event_type"
# the fused statement: the checks over the registered frame and the insert of the rows passing them, in input
# order (used only when that order is the (ts, event_id) order and no event_id repeats)
_FUSED_SQL = (
    f"INSERT INTO {{into}} SELECT $day::DATE, event_id, user_id, item_id, ($types::VARCHAR[])[etype], "
    f"make_timestamptz(ts_us), quantity::BIGINT, value FROM ({CHECKED_ROWS_SQL}) WHERE stage = 0 ORDER BY pos"
)


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_day` committed for one day.

    Attributes:
        day: the UTC day (partition).
        data_version: the ``raw_events`` partition's version (hex sha256,
            :func:`~factory_assets.data.warehouse.partition_data_version`).
        accepted: rows stored in ``raw_events`` for the day.
        quarantined: rows stored in the quarantine for the day (the source's own plus the rejected ones).
        undated: undated rows the source returned (each stored once across days).
        quarantine_by_reason: the day's stored quarantine rows by reason code, sorted by code.
        events_by_type: accepted rows by ``event_type`` (only types present), sorted by type.
        distinct_users, distinct_items: distinct ``user_id`` / ``item_id`` among the accepted rows.
        preview: the first :data:`PREVIEW_ROWS` accepted events by ``(ts, event_id)``
            (:data:`~factory_assets.data.sources.schema.EVENT_COLUMNS`, schema dtypes).
        files: the batch's per-file record (also in ``ingestion_log``).
    """

    day: date
    data_version: str
    accepted: int
    quarantined: int
    undated: int
    quarantine_by_reason: dict[str, int]
    events_by_type: dict[str, int]
    distinct_users: int
    distinct_items: int
    preview: pd.DataFrame = field(repr=False)
    files: tuple[FileIngest, ...] = ()


def ingest_day(
    con: duckdb.DuckDBPyConnection, day: date, batch: DayBatch, timings: dict[str, float] | None = None
) -> IngestResult:
    """Validate ``batch.events`` against ``day`` and atomically replace the day in the warehouse.

    Args:
        con: a warehouse connection (tables created by :func:`~factory_assets.data.warehouse.ensure_schema`),
            not inside a transaction.
        day: the UTC day; rows with ``ts`` outside it are quarantined (``ts_outside_partition``).
        batch: the source's day (:class:`~factory_assets.data.sources.base.DayBatch`): ``events`` in any
            dtypes ``validate_events`` accepts, ``quarantined``/``undated`` with the quarantine columns.
        timings: when given, filled with the seconds (wall clock, ``time.perf_counter``) of each step:
            ``prepare`` (on the proven-clean path: the bulk tests and the Arrow table), ``check`` (checks query, duplicates, order; only on the two-statement path),
            ``insert`` (delete the day, insert events; on the fused path the checks too), ``quarantine``
            (rejected rows' texts, quarantine, undated and log rows), ``version`` (data version, ledger,
            quarantine summary), ``stats`` (distinct users/items, counts by type; scans of the stored day),
            ``commit``, ``result``.

    Returns:
        :class:`IngestResult` (version, counts, metadata, preview).

    Raises:
        ValueError: ``batch.events`` lacks a required column (nothing is written).
        duckdb.Error: the transaction is rolled back; the previous version of the day stays.
    """
    clock = _Clock(timings)
    clean = _proven_clean(con, batch.events, day)
    if clean is not None:  # every check provably passes and the input is in (ts, event_id) order
        return _ingest_clean(con, day, batch, clean, clock)
    rows = prepare_rows(batch.events, day)
    fused = rows.n > 0 and _in_order_without_duplicates(rows)
    clock.lap("prepare")
    with storage.transaction(con):
        warehouse.delete_partition_rows(con, day)
        if fused:  # check and insert in one statement; the stages are read only when a row failed
            con.register("_validate_rows", rows.table)
            try:
                fused_sql = _FUSED_SQL.format(into=storage.into(con, RAW_EVENTS))
                inserted = con.execute(fused_sql, {**check_parameters(rows), "day": day}).fetchall()[0][0]
            finally:
                con.unregister("_validate_rows")
            clock.lap("insert")
            checked = _all_accepted(rows.n) if inserted == rows.n else check_rows(con, rows)
            order = checked.accepted
        else:
            checked = check_rows(con, rows) if rows.n else _nothing()
            order = accepted_order(rows, checked) if rows.n else checked.accepted
            clock.lap("check")
            if len(checked.accepted):
                con.register(_VIEW, _insert_view(rows.table, checked, order))
                try:
                    sort = "pos" if order is checked.accepted else "rank"
                    con.execute(_INSERT_SQL.format(into=storage.into(con, RAW_EVENTS), order=sort),
                                {"day": day, "types": list(EVENT_TYPES)})
                finally:
                    con.unregister(_VIEW)
            clock.lap("insert")
        quarantined = concat_quarantine([batch.quarantined, quarantine_frame(rows, checked)])
        warehouse.insert_quarantine(con, day, quarantined, batch.undated)
        warehouse.insert_ingestion_log(con, day, batch.files)
        clock.lap("quarantine")
        version = warehouse.partition_data_version(con, day)
        record_partition(con, RAW_EVENTS, day, version, len(checked.accepted))
        reasons = warehouse.quarantine_summary(con, day)
        clock.lap("version")
        users = items = 0
        by_type: dict[str, int] = {}
        if len(checked.accepted):
            users, items, by_type = _stats(con, day)
            if fused and inserted == rows.n:  # event types of the preview rows, as stored
                _stored_types(con, day, rows, checked.etype, order[:PREVIEW_ROWS])
        clock.lap("stats")
    clock.lap("commit")
    preview = event_frame(rows, checked, order[:PREVIEW_ROWS]) if len(order) else empty_events()
    clock.lap("result")
    return IngestResult(
        day=day,
        data_version=version,
        accepted=int(len(checked.accepted)),
        quarantined=int(len(quarantined)),
        undated=int(len(batch.undated)),
        quarantine_by_reason=reasons,
        events_by_type=by_type,
        distinct_users=int(users),
        distinct_items=int(items),
        preview=preview,
        files=tuple(batch.files),
    )


def _stats(con: duckdb.DuckDBPyConnection, day: date) -> tuple[int, int, dict[str, int]]:
    """Distinct users, distinct items and rows by ``event_type`` (sorted) of the stored day (two scans of
    dictionary-compressed columns: cheaper than one aggregate holding the row hashes too)."""
    users, items = con.execute(_DISTINCT_SQL, [day]).fetchall()[0]
    by_type = {str(t): int(k) for t, k in con.execute(_BY_TYPE_SQL, [day]).fetchall()}
    return int(users), int(items), by_type


@dataclass(frozen=True)
class _Clean:
    """A batch whose every row provably passes every check (:func:`_proven_clean`)."""

    table: pa.Table  # EVENT_COLUMNS as stored: 4 x string, timestamp[us, UTC], int64, float64 (no copy)
    n: int


def _proven_clean(con: duckdb.DuckDBPyConnection, events: pd.DataFrame, day: date) -> _Clean | None:
    """The batch as an Arrow table when a few bulk tests (no per-row Python) prove that every row passes
    every check of :func:`~.validation.validate_events` for ``day`` and that input order is the stored
    ``(ts, event_id)`` order; None otherwise (the general path then decides row by row).

    Only typed columns qualify: Arrow-backed text ids/``event_type`` (:func:`~.validation.is_arrow_text`; an
    object column of ``str`` is converted to Arrow first, one pass over its Python strings),
    ``ts`` ``datetime64[us, UTC]``, ``quantity`` int64, ``value`` float64.  The tests (each sufficient):

    * ids: no missing value; every value's bytes (UTF-8) in printable ASCII 0x20-0x7E (so no control
      character, length in characters = length in bytes), 1..MAX_ID_LENGTH bytes, first byte not a space
      (printable ASCII whitespace is only the space, so no value is empty or blank);
    * ``event_type``: no missing value, every value exactly one of :data:`~.schema.EVENT_TYPES`;
    * ``ts``: no NaT, every value in ``[day, day + 1)`` UTC; ``quantity`` in ``1..MAX_QUANTITY``;
      ``value`` finite;
    * order: ``ts`` non-decreasing and ``event_id`` strictly increasing over all rows (so input order is the
      ``(ts, event_id)`` order and no ``event_id`` repeats), and the connection preserves insertion order.
    """
    if len(events) == 0 or any(c not in events.columns for c in EVENT_COLUMNS):
        return None
    dtypes = [events[c].dtype for c in EVENT_COLUMNS]
    if not (all(is_arrow_text(t) or t == object for t in dtypes[:4]) and str(dtypes[4]) == "datetime64[us, UTC]"
            and dtypes[5] == np.int64 and dtypes[6] == np.float64):
        return None
    if not con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]:
        return None
    try:
        text = {c: _string_chunks(events[c]) for c in EVENT_COLUMNS[:4]}
    except (pa.ArrowException, TypeError, ValueError):  # object text with other values than str / None
        return None
    if not all(_clean_ids(text[c]) for c in ID_COLUMNS):
        return None
    types = text["event_type"]
    if types.null_count or not pc.all(pc.is_in(types, value_set=pa.array(EVENT_TYPES))).as_py():
        return None
    ts = events["ts"].to_numpy(dtype="datetime64[us]")  # UTC wall clock, no copy; NaT is min int64
    ts_us = ts.view(np.int64)
    start_us = (day - date(1970, 1, 1)).days * _DAY_US
    quantity = events["quantity"].to_numpy()
    value = events["value"].to_numpy()
    if not (ts_us.min() >= start_us and ts_us.max() < start_us + _DAY_US
            and quantity.min() >= 1 and quantity.max() <= MAX_QUANTITY and np.isfinite(value).all()):
        return None
    if len(events) > 1:
        ids = text["event_id"]
        if not ((ts_us[1:] >= ts_us[:-1]).all() and pc.all(pc.less(ids.slice(0, len(ids) - 1), ids.slice(1))).as_py()):
            return None
    table = pa.table({**text, "ts": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
                      "quantity": pa.array(quantity, type=pa.int64()), "value": pa.array(value, type=pa.float64())})
    return _Clean(table, len(events))


def _string_chunks(values: pd.Series) -> pa.ChunkedArray:
    """A text column as a ``string`` ChunkedArray: Arrow-backed text without a copy (unless ``large_string``),
    an object column of ``str``/``None`` converted (one pass over Python objects; raises for other values)."""
    if values.dtype == object:
        return pa.chunked_array([pa.array(values.to_numpy(), type=pa.string(), from_pandas=False)])
    array = pa.chunked_array(values.array.__arrow_array__())
    return array if array.type == pa.string() else array.cast(pa.string())


def _clean_ids(ids: pa.ChunkedArray) -> bool:
    """True when no value is missing and every value is 1..MAX_ID_LENGTH bytes of printable ASCII (0x20-0x7E)
    that do not start with a space (see :func:`_proven_clean`)."""
    if ids.null_count:
        return False
    for chunk in ids.chunks:
        if not len(chunk):
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        lengths = np.diff(offsets)
        if lengths.min() < 1 or lengths.max() > MAX_ID_LENGTH:
            return False
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
        text = data[offsets[0] : offsets[-1]]
        if text.min() < 0x20 or text.max() > 0x7E or (data[offsets[:-1]] == 0x20).any():
            return False
    return True


def _ingest_clean(con: duckdb.DuckDBPyConnection, day: date, batch: DayBatch, clean: _Clean, clock: "_Clock") -> IngestResult:
    """:func:`ingest_day` for a batch :func:`_proven_clean` accepted whole: the rows are stored as they come
    (DuckDB's bulk insert of the Arrow table, input order), nothing of them is quarantined."""
    clock.lap("prepare")
    with storage.transaction(con):
        warehouse.delete_partition_rows(con, day)
        con.register(_VIEW, clean.table)
        try:
            con.execute(f"INSERT INTO {storage.into(con, RAW_EVENTS)} SELECT $day::DATE, {', '.join(EVENT_COLUMNS)} FROM {_VIEW}", {"day": day})
        finally:
            con.unregister(_VIEW)
        clock.lap("insert")
        quarantined = concat_quarantine([batch.quarantined, empty_quarantine()])
        warehouse.insert_quarantine(con, day, quarantined, batch.undated)
        warehouse.insert_ingestion_log(con, day, batch.files)
        clock.lap("quarantine")
        version = warehouse.partition_data_version(con, day)
        record_partition(con, RAW_EVENTS, day, version, clean.n)
        reasons = warehouse.quarantine_summary(con, day)
        clock.lap("version")
        users, items, by_type = _stats(con, day)
        clock.lap("stats")
    clock.lap("commit")
    head = batch.events.iloc[:PREVIEW_ROWS].reset_index(drop=True)  # the first rows in (ts, event_id) order
    preview = pd.DataFrame({
        **{c: pd.Series(head[c].to_numpy(dtype=object), dtype=object) for c in EVENT_COLUMNS[:4]},
        "ts": head["ts"], "quantity": head["quantity"], "value": head["value"],
    })
    clock.lap("result")
    return IngestResult(
        day=day, data_version=version, accepted=clean.n, quarantined=int(len(quarantined)),
        undated=int(len(batch.undated)), quarantine_by_reason=reasons, events_by_type=by_type,
        distinct_users=users, distinct_items=items, preview=preview, files=tuple(batch.files),
    )


class _Clock:
    """Seconds per step into ``timings`` (nothing when it is None)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[step] = self.timings.get(step, 0.0) + now - self.last
            self.last = now


def _in_order_without_duplicates(rows: PreparedRows) -> bool:
    """True when ``event_id`` is text, strictly increasing over ALL rows (so no subset has a duplicate) and
    ``ts`` non-decreasing (so input order is the ``(ts, event_id)`` order of any subset); numpy, no sort."""
    event_id = rows.ids["event_id"].to_numpy()
    if rows.n < 2:
        return True
    try:
        return bool((rows.ts_us[1:] >= rows.ts_us[:-1]).all()) and bool((event_id[1:] > event_id[:-1]).all())
    except TypeError:  # a missing event_id
        return False


def _all_accepted(n: int) -> CheckedRows:
    return CheckedRows(np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8), np.arange(n, dtype=np.int64))


def _stored_types(con, day: date, rows: PreparedRows, etype: np.ndarray, positions: np.ndarray) -> None:
    """Fill ``etype`` at ``positions`` (a few accepted rows) from the stored ``event_type`` of their ids."""
    ids = [rows.ids["event_id"].iat[int(p)] for p in positions]
    marks = ", ".join("?" for _ in ids)
    stored = dict(con.execute(
        f"SELECT event_id, event_type FROM {RAW_EVENTS} WHERE partition_day = ? AND event_id IN ({marks})", [day, *ids]
    ).fetchall())
    for p, eid in zip(positions, ids):
        etype[p] = EVENT_TYPES.index(stored[eid]) + 1


def _nothing() -> CheckedRows:
    empty = np.zeros(0, dtype=np.int8)
    return CheckedRows(empty, empty, np.zeros(0, dtype=np.int64))


def _insert_view(table: pd.DataFrame, checked: CheckedRows, order: np.ndarray) -> pd.DataFrame:
    """The prepared frame plus ``stage``/``etype`` (int8) and, when the accepted rows are not already in
    ``(ts, event_id)`` order, their ``rank`` (int64) in that order; columns are not copied."""
    view = table.copy(deep=False)  # new columns become blocks of their own: nothing is consolidated or copied
    view["stage"] = checked.stage
    view["etype"] = checked.etype
    if order is not checked.accepted:
        rank = np.zeros(len(table), dtype=np.int64)
        rank[order] = np.arange(len(order), dtype=np.int64)
        view["rank"] = rank
    return view
