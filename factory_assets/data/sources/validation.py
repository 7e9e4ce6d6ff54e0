"""Row validation of event batches as one DuckDB query, shared by every source (no per-row Python on the data path).

:func:`validate_events` splits rows into accepted events (:data:`~.schema.EVENT_COLUMNS`, schema dtypes) and
quarantined rows (:data:`~.schema.QUARANTINE_COLUMNS`).  How it works:

1. *Prepare* (vectorised pandas/numpy, no copy of the id strings): ids as text (``str`` values are used as
   they are; other values become text as ``str(value)``), ``ts`` as int64 UTC microseconds plus an
   "unparseable" mask (:func:`utc_microseconds`), ``quantity``/``value`` as float64 (text is parsed,
   anything else is NaN).
2. *Check* in DuckDB SQL over that frame: one ``CASE`` gives every row the number of the first check it
   fails (:data:`STAGES`, in the documented order), ``0`` when it passes them all; duplicates of the
   remaining rows (``duplicate_event_id``, the first occurrence in input order wins) by a window over
   ``event_id`` (skipped when the accepted ids are strictly increasing, which proves them distinct).
3. *Assemble*: accepted rows are taken from the prepared columns (the same ``str`` objects, no new strings),
   sorted by ``(ts, event_id)``; rejected rows become quarantine rows, grouped by check in check order and
   in input order within a check, with the same texts as the row had when that check ran: raw text up to
   the check, normalised values after it (e.g. a duplicate's ``ts`` is UTC ISO text, its ``quantity`` an
   integer).

Timestamps: :func:`utc_microseconds` is the one parser of ISO-8601 text (and datetime columns) of the
sources; Online Retail's local-time reading builds on it for text with an explicit offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from factory_assets.data.sources.schema import (
    EVENT_COLUMNS,
    EVENT_TYPES,
    MAX_ID_LENGTH,
    MAX_QUANTITY,
    REASONS,
    _CONTROL,
    _CONTROL_NAMES,
    _to_text,
    concat_quarantine,
    day_bounds,
    empty_events,
    empty_quarantine,
    quarantine_rows,
)

__all__ = [
    "CHECKED_ROWS_SQL", "STAGES", "CheckedRows", "PreparedRows", "check_parameters", "accepted_order", "check_rows", "event_frame", "prepare_rows",
    "ID_COLUMNS", "is_arrow_text", "quarantine_frame", "utc_microseconds", "validate_events",
]

ID_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "item_id")

#: The checks in the order they run: (reason code, column the detail names).  Stage numbers are 1-based.
STAGES: tuple[tuple[str, str], ...] = (
    *((reason, column) for column in ID_COLUMNS for reason in ("missing_id", "id_too_long", "id_control_character")),
    ("unknown_event_type", "event_type"),
    ("bad_timestamp", "ts"),
    ("ts_outside_partition", "ts"),
    ("bad_quantity", "quantity"),
    ("bad_value", "value"),
    ("duplicate_event_id", "event_id"),
)
_STAGE = {reason: i + 1 for i, (reason, _) in enumerate(STAGES) if reason not in ("missing_id", "id_too_long", "id_control_character")}
_DUPLICATE = len(STAGES)
assert set(r for r, _ in STAGES) <= set(REASONS)

#: What Python's ``str.strip()`` removes (``str.isspace``), for DuckDB's ``trim(s, characters)``.
_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
_NAT = np.iinfo(np.int64).min
_TYPE_NAMES = np.asarray(("", *EVENT_TYPES), dtype=object)  # by etype (0 = unknown)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DAY_US = 86_400_000_000
# pandas' nanosecond range (1677-09-21 .. 2262-04-11): text outside it was always "cannot be parsed" here
_NS_MIN_US = pd.Timestamp.min.value // 1000 + 1
_NS_MAX_US = pd.Timestamp.max.value // 1000
# a time followed by a UTC offset; such strings are parsed apart from naive ones (pandas would otherwise
# give a naive string the offset of an aware string before it in the same call)
_OFFSET = re.compile(r"[Tt ]\d[\d:.,]*\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)\s*$")

_id_checks = "\n".join(
    f"""        WHEN {c} IS NULL OR CASE WHEN unicode({c}) > 32 AND unicode({c}) < 133 THEN false ELSE trim({c}, $ws) = '' END
             THEN {3 * k + 1}
        WHEN length({c}) > $max_id THEN {3 * k + 2}
        WHEN $control_{c} AND regexp_matches({c}, $control) THEN {3 * k + 3}"""
    for k, c in enumerate(ID_COLUMNS)
)
# the common case, an exact spelling, without trim/lower (their position in EVENT_TYPES, 1-based)
_exact_types = " ".join(f"WHEN $type{k} THEN {k}" for k in range(1, len(EVENT_TYPES) + 1))
# Identifiers and stage numbers come from this module; every value is a parameter.
_CHECK_SQL = f"""
SELECT pos, etype, CASE
{_id_checks}
        WHEN etype IS NULL THEN {_STAGE["unknown_event_type"]}
        WHEN ts_bad THEN {_STAGE["bad_timestamp"]}
        WHEN $has_day AND (ts_us < $start_us OR ts_us >= $end_us) THEN {_STAGE["ts_outside_partition"]}
        WHEN quantity IS NULL OR NOT isfinite(quantity) OR quantity <> floor(quantity) OR quantity <= 0
             OR quantity > $max_quantity THEN {_STAGE["bad_quantity"]}
        WHEN value IS NULL OR NOT isfinite(value) THEN {_STAGE["bad_value"]}
        ELSE 0 END::TINYINT AS stage
FROM (SELECT *, CASE event_type {_exact_types} ELSE list_position($types::VARCHAR[], lower(trim(event_type, $ws))) END::TINYINT
      AS etype FROM _validate_rows)
"""
_DUPLICATES_SQL = """
SELECT pos FROM (SELECT pos, row_number() OVER (PARTITION BY event_id ORDER BY pos) AS nth FROM _validate_candidates)
WHERE nth > 1
"""

@contextmanager
def _connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh in-memory DuckDB connection (UTC) for one call, closed after it.

    Not kept between calls: an open DuckDB database keeps its worker threads alive, and a process that later
    forks (the service's log writer) must not carry them into the child (a forked child crashed on them).
    Opening one costs about a millisecond.
    """
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def validate_events(frame: pd.DataFrame, day: date | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into accepted events (schema dtypes) and quarantined rows with a reason.

    Args:
        frame: rows with at least the :data:`~.schema.EVENT_COLUMNS` (any dtypes, any index; ``ts`` may be
            a tz-aware or naive (= UTC) datetime column or ISO-8601 text with or without an offset, naive
            text is UTC).  Optional ``source_file``/``source_line``/``source_sha256`` columns are carried
            into the quarantine.
        day: when given, rows whose ``ts`` is outside that UTC day ``[00:00, 24:00)`` are quarantined
            (``ts_outside_partition``).

    Checks, in this order (a row gets the first reason that applies):

    * per id, ``event_id`` then ``user_id`` then ``item_id``: null, empty or only whitespace
      (``missing_id``, detail ``"<column> is null or empty"``), longer than :data:`~.schema.MAX_ID_LENGTH`
      characters (``id_too_long``), a control character U+0000-U+001F or U+007F-U+009F
      (``id_control_character``, detail names the field and the first such character, e.g.
      ``"user_id contains a control character (LF)"``);
    * ``event_type`` stripped and lower-cased not in :data:`~.schema.EVENT_TYPES` (``unknown_event_type``);
    * ``ts`` missing or unparseable (``bad_timestamp``), outside ``day`` (``ts_outside_partition``);
    * ``quantity`` missing, not an integer, ``<= 0`` or ``> MAX_QUANTITY`` (``bad_quantity``);
    * ``value`` missing, NaN or infinite (``bad_value``);
    * ``event_id`` already seen on an earlier row that passed every check (``duplicate_event_id``).

    The steps are public (:func:`prepare_rows`, :func:`check_rows`, :func:`accepted_order`,
    :func:`event_frame`, :func:`quarantine_frame`) so that the warehouse's fused ingest
    (:func:`factory_assets.data.ingest.ingest_day`) gives exactly the same split without building the
    accepted frame.

    Returns:
        ``(accepted, quarantined)``.  ``accepted`` has exactly :data:`~.schema.EVENT_COLUMNS`: ids and
        ``event_type`` ``object`` (``str``), ``ts`` ``datetime64[us, UTC]``, ``quantity`` ``int64``,
        ``value`` ``float64``, sorted by ``(ts, event_id)``, default index.  ``quarantined`` has
        :data:`~.schema.QUARANTINE_COLUMNS` (text, ``source_line`` ``Int64``), grouped by check in check
        order, input order within a check.  Every input row is in exactly one of the two.

    Raises:
        ValueError: if a required column is missing (the message names it).
    """
    rows = prepare_rows(frame, day)
    if rows.n == 0:
        return empty_events(), empty_quarantine()
    with _connection() as con:
        checked = check_rows(con, rows)
    return event_frame(rows, checked, accepted_order(rows, checked)), quarantine_frame(rows, checked)


@dataclass(frozen=True)
class PreparedRows:
    """A batch prepared for the checks (step 1), ``n`` rows, positions ``0..n-1`` in input order.

    Attributes:
        frame: the input (default index), for the quarantine's raw texts and source columns.
        day: the partition day the rows are checked against, or None.
        ids: ``event_id``/``user_id``/``item_id`` as object Series of ``str`` or ``None``.
        event_type: the raw ``event_type`` as object Series of ``str`` or ``None``.
        ts_us: int64 UTC microseconds (min int64 where unparseable); ts_bad: bool, unparseable.
        quantity, value: float64 (NaN where not a number).
        table: what DuckDB reads (registered, no copy): ``pos`` int64, the ids, ``event_type``, ``ts_us``,
            ``ts_bad``, ``quantity``, ``value``.
    """

    frame: pd.DataFrame
    day: date | None
    ids: dict[str, pd.Series]
    event_type: pd.Series
    ts_us: np.ndarray
    ts_bad: np.ndarray
    quantity: np.ndarray
    value: np.ndarray
    table: pd.DataFrame

    @property
    def n(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class CheckedRows:
    """The outcome of :func:`check_rows`: ``stage`` int8 per row (0 = accepted, else the 1-based number of
    the failed check in :data:`STAGES`), ``etype`` int8 per row (1-based position of the normalised
    ``event_type`` in :data:`~.schema.EVENT_TYPES`, 0 = unknown), ``accepted`` int64 positions (ascending)."""

    stage: np.ndarray
    etype: np.ndarray
    accepted: np.ndarray


def prepare_rows(frame: pd.DataFrame, day: date | None = None) -> PreparedRows:
    """Step 1: the columns the checks read (vectorised; ``str`` ids are kept as the same objects).

    Raises:
        ValueError: if a required column is missing (the message names it).
    """
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"events are missing required column(s) {missing}; got {list(frame.columns)}")
    n = len(frame)
    if not (isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1):
        frame = frame.reset_index(drop=True)  # positions are the row numbers below (no copy otherwise)
    ids = {c: _text_column(frame[c]) for c in ID_COLUMNS}
    ts_us, ts_bad = utc_microseconds(frame["ts"])
    if not _is_datetime(frame["ts"]):  # text beyond pandas' range was always unparseable here
        ts_bad = ts_bad | (ts_us < _NS_MIN_US) | (ts_us > _NS_MAX_US)
    quantity = _numbers(frame["quantity"])
    value = _numbers(frame["value"])
    event_type = _text_column(frame["event_type"])
    table = pd.DataFrame(
        {
            "pos": np.arange(n, dtype=np.int64),
            **ids,
            "event_type": event_type,
            "ts_us": ts_us,
            "ts_bad": ts_bad,
            "quantity": quantity,
            "value": value,
        },
        copy=False,
    )
    return PreparedRows(frame, day, ids, event_type, ts_us, ts_bad, quantity, value, table)


def check_rows(con: duckdb.DuckDBPyConnection, rows: PreparedRows) -> CheckedRows:
    """Steps 2: every check as one DuckDB query over ``rows.table`` (registered on ``con`` as
    ``_validate_rows`` for the call), then duplicates of the accepted rows.

    ``con`` is any DuckDB connection (the query reads only the registered frame; the warehouse's own
    connection is fine).  Results are fetched with ``fetchnumpy`` (the result is finished).
    """
    n = rows.n
    con.register("_validate_rows", rows.table)
    try:
        result = con.execute(_CHECK_SQL, check_parameters(rows)).fetchnumpy()
    finally:
        con.unregister("_validate_rows")
    stage = np.empty(n, dtype=np.int8)
    etype = np.zeros(n, dtype=np.int8)
    pos = np.asarray(result["pos"], dtype=np.int64)
    stage[pos] = np.asarray(result["stage"], dtype=np.int8)
    etype[pos] = np.ma.filled(np.ma.asarray(result["etype"]).astype(np.int8), 0)

    accepted = np.flatnonzero(stage == 0)
    event_id = rows.ids["event_id"].to_numpy()
    if len(accepted) > 1 and not bool((event_id[accepted[1:]] > event_id[accepted[:-1]]).all()):
        duplicates = _duplicates(con, accepted, rows.ids["event_id"])
        if len(duplicates):
            stage[duplicates] = _DUPLICATE
            accepted = np.flatnonzero(stage == 0)
    return CheckedRows(stage, etype, accepted)


#: The checks as SQL over a frame registered as ``_validate_rows`` (:attr:`PreparedRows.table`): every column
#: of it plus ``etype`` (TINYINT, 1-based position in EVENT_TYPES, NULL = unknown) and ``stage`` (TINYINT,
#: 0 = passes every check but the duplicate one); parameters :func:`check_parameters`.
CHECKED_ROWS_SQL = _CHECK_SQL.replace("SELECT pos, etype, CASE", "SELECT *, CASE", 1)


def check_parameters(rows: PreparedRows) -> dict:
    """The named parameters of the checks query for ``rows`` (the day's bounds in UTC microseconds ...)."""
    start_us, end_us = (0, 0)
    if rows.day is not None:
        start_us = (rows.day - date(1970, 1, 1)).days * _DAY_US
        end_us = start_us + _DAY_US
    return {
        "ws": _WHITESPACE,
        "max_id": MAX_ID_LENGTH,
        "control": _CONTROL,
        # the per-row regex only for a column that may hold a control character at all
        **{f"control_{c}": _may_have_control(rows.ids[c]) for c in ID_COLUMNS},
        "types": list(EVENT_TYPES),
        **{f"type{k}": t for k, t in enumerate(EVENT_TYPES, start=1)},
        "has_day": rows.day is not None,
        "start_us": start_us,
        "end_us": end_us,
        "max_quantity": MAX_QUANTITY,
    }


def accepted_order(rows: PreparedRows, checked: CheckedRows) -> np.ndarray:
    """Positions of the accepted rows ordered by ``(ts, event_id)`` (int64; ``checked.accepted`` itself,
    no sort, when the input is already in that order)."""
    return _sort_by_ts_then_id(checked.accepted, rows.ts_us, rows.ids["event_id"].to_numpy())


def event_frame(rows: PreparedRows, checked: CheckedRows, positions: np.ndarray) -> pd.DataFrame:
    """Accepted events at ``positions`` (in that order) with the schema's columns and dtypes, default index."""
    return pd.DataFrame(
        {
            **{c: rows.ids[c].take(positions).reset_index(drop=True) for c in ID_COLUMNS},
            "event_type": pd.Series(_TYPE_NAMES[checked.etype[positions]], dtype=object),
            "ts": pd.Series(pd.DatetimeIndex(rows.ts_us[positions].view("datetime64[us]")).tz_localize("UTC")),
            "quantity": pd.Series(rows.quantity[positions].astype(np.int64)),
            "value": pd.Series(rows.value[positions], dtype=np.float64),
        }
    )


def quarantine_frame(rows: PreparedRows, checked: CheckedRows) -> pd.DataFrame:
    """Quarantine rows (:data:`~.schema.QUARANTINE_COLUMNS`) of every failed check; only the rejected rows
    are touched (an empty quarantine costs one pass over ``stage``)."""
    if rows.n == 0:
        return empty_quarantine()
    return _quarantine(rows.frame, checked.stage, rows.ids, rows.event_type, rows.ts_us, rows.quantity,
                       rows.value, checked.etype.astype(np.int64), rows.day)


def _duplicates(con: duckdb.DuckDBPyConnection, accepted: np.ndarray, event_id: pd.Series) -> np.ndarray:
    """Positions of rows whose ``event_id`` an earlier accepted row already has (SQL window)."""
    candidates = pd.DataFrame({"pos": accepted, "event_id": event_id.take(accepted).reset_index(drop=True)})
    con.register("_validate_candidates", candidates)
    try:
        found = con.execute(_DUPLICATES_SQL).fetchnumpy()["pos"]
    finally:
        con.unregister("_validate_candidates")
    return np.asarray(found, dtype=np.int64)


def _sort_by_ts_then_id(positions: np.ndarray, ts_us: np.ndarray, event_id: np.ndarray) -> np.ndarray:
    """``positions`` ordered by ``(ts, event_id)``: a stable sort on ``ts``, then the (rare) runs of equal
    ``ts`` re-sorted by ``event_id``."""
    ts = ts_us[positions]
    if len(ts) < 2 or bool((ts[1:] >= ts[:-1]).all()):  # already ordered by ts (sources usually are)
        tie = np.flatnonzero(ts[1:] == ts[:-1])
        if not len(tie) or bool((event_id[positions[tie + 1]] > event_id[positions[tie]]).all()):
            return positions
    order = positions[np.argsort(ts, kind="stable")]
    ts = ts_us[order]
    tie = np.flatnonzero(ts[1:] == ts[:-1])
    if len(tie):
        slots = np.union1d(tie, tie + 1)  # whole runs of equal ts, each a contiguous block
        sub = pd.DataFrame({"ts": ts[slots], "event_id": event_id[order[slots]], "pos": order[slots]})
        order[slots] = sub.sort_values(["ts", "event_id"], kind="stable")["pos"].to_numpy()
    return order


def _quarantine(
    frame: pd.DataFrame,
    stage: np.ndarray,
    ids: dict[str, pd.Series],
    event_type: pd.Series,
    ts_us: np.ndarray,
    quantity: np.ndarray,
    value: np.ndarray,
    etype: np.ndarray,
    day: date | None,
) -> pd.DataFrame:
    """Quarantine rows of every failed check (only the rejected rows are touched)."""
    rejected = np.flatnonzero(stage != 0)
    if not len(rejected):
        return empty_quarantine()
    parts: list[pd.DataFrame] = []
    for number in np.unique(stage[rejected]):
        at = rejected[stage[rejected] == number]
        reason, column = STAGES[int(number) - 1]
        rows = frame.iloc[at].copy()
        for c in rows.columns:  # Arrow-backed text as Python objects (missing = None), as object columns are
            if is_arrow_text(rows[c].dtype):
                rows[c] = rows[c].to_numpy(dtype=object, na_value=None)
        for c in ID_COLUMNS:  # ids are text from their own check on
            rows[c] = ids[c].iloc[at].to_numpy()
        if number > _STAGE["unknown_event_type"]:
            rows["event_type"] = np.asarray(("", *EVENT_TYPES), dtype=object)[etype[at]]
        if number > _STAGE["bad_timestamp"]:
            rows["ts"] = pd.Series(pd.DatetimeIndex(ts_us[at].view("datetime64[us]")).tz_localize("UTC"), index=rows.index)
        if number > _STAGE["bad_quantity"]:
            rows["quantity"] = quantity[at].astype(np.int64)
        if number > _STAGE["bad_value"]:
            rows["value"] = value[at]
        parts.append(quarantine_rows(rows, reason, _detail(reason, column, rows, event_type.iloc[at], day)))
    return concat_quarantine(parts)


def _detail(reason: str, column: str, rows: pd.DataFrame, event_type: pd.Series, day: date | None) -> str | pd.Series:
    """The detail sentence(s) of one check's rejected rows (index of ``rows``)."""
    if reason == "missing_id":
        return f"{column} is null or empty"
    if reason == "id_too_long":
        return f"{column} longer than {MAX_ID_LENGTH}"
    if reason == "id_control_character":
        first = rows[column].str.extract(f"({_CONTROL})", expand=False).map(_CONTROL_NAMES)
        return f"{column} contains a control character (" + first.fillna("?") + ")"
    if reason == "unknown_event_type":
        text = pd.Series(event_type.to_numpy(), index=rows.index, dtype=object).str.strip().str.lower()
        return "event_type=" + text.fillna("<null>").astype(str)
    if reason == "ts_outside_partition":
        start, end = day_bounds(day)  # type: ignore[arg-type]
        return f"ts not in [{start.isoformat()}, {end.isoformat()})"
    if reason == "duplicate_event_id":
        return "event_id=" + rows["event_id"]
    return f"{column}=" + rows[column].map(_to_text).fillna("<null>").astype(str)  # bad_timestamp/quantity/value


# ---------------------------------------------------------------------------------------------------------
# Preparing columns (vectorised)


def _text_column(values: pd.Series) -> pd.Series:
    """An object Series of ``str`` or ``None``; ``str`` values are kept as the same objects.

    Non-text values (numbers, timestamps, mixed columns) become ``str(value)`` (a Timestamp its ISO form),
    missing ones ``None``; that conversion runs per distinct value, and only for such columns.
    """
    if is_arrow_text(values.dtype):  # Arrow-backed text (str or missing): Python objects, missing as None
        return pd.Series(values.to_numpy(dtype=object, na_value=None), index=values.index, dtype=object)
    if values.dtype == object:
        if pd.api.types.infer_dtype(values, skipna=False) in ("string", "empty"):  # only str: one pass
            return values
        if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):  # str and missing values
            return values.where(values.notna(), None)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.array([_to_text(u) for u in uniques] + [None], dtype=object)
    return pd.Series(mapped[codes], index=values.index, dtype=object)


def is_arrow_text(dtype: object) -> bool:
    """True for Arrow-backed text dtypes: ``pd.ArrowDtype(pa.string() / pa.large_string())`` and
    ``pd.StringDtype("pyarrow")``."""
    if isinstance(dtype, pd.StringDtype):
        return dtype.storage in ("pyarrow", "pyarrow_numpy")
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype)
    return False


def _may_have_control(values: pd.Series) -> bool:
    """False when no value of a text column (``str``/``None``) holds a control character, proven in bulk:
    the values joined are ASCII (``str.isascii`` is O(1)) and their bytes lie in 0x20-0x7E.  True (check
    row by row) for non-ASCII text or anything else."""
    try:
        joined = "".join(values.to_numpy())
    except TypeError:  # missing values (None) among the text
        try:
            joined = "".join(values.dropna().to_numpy())
        except TypeError:
            return True
    if not joined.isascii():
        return True
    if not joined:
        return False
    codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    return bool(codes.min() < 0x20 or codes.max() > 0x7E)


def _numbers(values: pd.Series) -> np.ndarray:
    """float64 numbers (text is parsed; anything that is not a number is NaN)."""
    if pd.api.types.is_float_dtype(values.dtype) or pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(values, errors="coerce")
    try:
        return np.asarray(parsed, dtype=np.float64)
    except (TypeError, ValueError):
        return pd.to_numeric(parsed.astype(object).map(lambda v: v if isinstance(v, (int, float)) else np.nan),
                             errors="coerce").to_numpy(dtype=np.float64)


def _is_datetime(values: pd.Series) -> bool:
    return isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(values.dtype)


def utc_microseconds(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTC microseconds since 1970-01-01 (int64, any year 1-9999) and an "unparseable" mask (bool).

    Accepts a tz-aware datetime column (converted to UTC), a naive one (taken as UTC), or text: ISO-8601
    with an offset / ``Z`` (converted), without one (UTC), surrounding whitespace ignored.  Other values
    (datetime objects ...) are read through their text (``isoformat``).  Empty text and missing values are
    unparseable.  Text is parsed vectorised by pandas, aware and naive strings apart (pandas would give a
    naive string the offset of an aware one before it); only strings pandas cannot take (years outside
    1677-2262, odd spellings) go through :meth:`datetime.fromisoformat` one by one.
    """
    if _is_datetime(values):
        ts = values if isinstance(values.dtype, pd.DatetimeTZDtype) else values.dt.tz_localize("UTC")
        us = _as_us(ts.dt.tz_convert("UTC"))
        return us, us == _NAT
    n = len(values)
    us = np.full(n, _NAT, dtype="int64")
    text = _text_column(values).reset_index(drop=True)
    text = text.str.strip() if len(text) else text
    present = (text.notna() & (text != "")).to_numpy(dtype=bool)
    if present.any():
        aware = text.str.contains(_OFFSET, na=False).to_numpy(dtype=bool) & present
        for mask in (aware, present & ~aware):
            if mask.any():
                parsed = pd.to_datetime(text[mask], utc=True, errors="coerce", format="ISO8601")
                us[mask] = _as_us(parsed)
        for i in np.flatnonzero(present & (us == _NAT)):  # out of pandas' range or odd spellings: few
            us[i] = _python_iso(text.iloc[i])
    return us, us == _NAT


def _as_us(ts: pd.Series) -> np.ndarray:
    """int64 UTC microseconds of a tz-aware Series (NaT -> min int64)."""
    return ts.dt.tz_localize(None).astype("datetime64[us]").to_numpy().view("int64").copy()


def _python_iso(text: str) -> int:
    """Microseconds since 1970 of one ISO-8601 string by :meth:`datetime.fromisoformat` (min int64 if bad)."""
    try:
        stamp = datetime.fromisoformat(text[:-1] + "Z" if text.endswith("z") else text)
    except ValueError:
        return _NAT
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return (stamp - _EPOCH) // timedelta(microseconds=1)
