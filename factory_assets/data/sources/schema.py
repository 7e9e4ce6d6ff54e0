"""The common event schema every source produces, and row-level validation into accepted/quarantined.

An event is one interaction of a user with an item:

============  ===============================  ==================================================
column        dtype (pandas / DuckDB)          meaning
============  ===============================  ==================================================
event_id      ``str`` / VARCHAR                unique per source, stable across re-reads, no control characters
user_id       ``str`` / VARCHAR                1-128 characters, never empty, no control characters
item_id       ``str`` / VARCHAR                1-128 characters, never empty, no control characters
event_type    ``str`` / VARCHAR                one of :data:`EVENT_TYPES`
ts            ``datetime64[us, UTC]`` / TIMESTAMPTZ  when it happened, UTC
quantity      ``int64`` / BIGINT               units (1 for views and ratings), 0 < q <= MAX_QUANTITY
value         ``float64`` / DOUBLE             money for purchases/returns/carts, stars for ratings
============  ===============================  ==================================================

Rejected rows go to a quarantine frame with the same columns stored as text plus ``reason`` (a code from
:data:`REASONS`), ``detail`` (a human sentence naming the field) and where they came from
(``source_file``, ``source_line``, ``source_sha256``).

A control character is one of Unicode category Cc: U+0000-U+001F (NUL, TAB, LF, CR ...) and U+007F-U+009F.
The HTTP service refuses ids that are not printable (422), so an id with one is refused here already
(``id_control_character``), for every source.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone

import numpy as np
import pandas as pd

EVENT_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "item_id", "event_type", "ts", "quantity", "value")
EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase", "rating", "return")
MAX_ID_LENGTH = 128
MAX_QUANTITY = 100_000
#: Characters per CSV field (Python csv's default ``field_size_limit``, 128 Ki); a CSV record with a
#: longer field is quarantined (``field_too_large``), the file's other records are read.
MAX_CSV_FIELD = 131_072

QUARANTINE_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, "reason", "detail", "source_file", "source_line", "source_sha256")

# Reason codes, one spelling everywhere (tables, metadata, tests).
REASONS: dict[str, str] = {
    "missing_id": "event_id, user_id or item_id is null or empty",
    "id_too_long": f"an id is longer than {MAX_ID_LENGTH} characters",
    "id_control_character": "an id contains a control character (NUL, CR, LF, TAB ...: U+0000-U+001F, U+007F-U+009F), "
    "which the HTTP service refuses",
    "unknown_event_type": f"event_type is not one of {', '.join(EVENT_TYPES)}",
    "bad_timestamp": "ts is missing or cannot be parsed",
    "ts_outside_partition": "ts does not fall inside the partition's UTC day",
    "bad_quantity": f"quantity is missing, not an integer, <= 0 or > {MAX_QUANTITY}",
    "bad_value": "value is NaN or infinite",
    "duplicate_event_id": "an earlier row in the same batch has the same event_id",
    "missing_customer_id": "the source row has no customer (Online Retail)",
    "adjustment": "bad-debt adjustment invoice, not an interaction (Online Retail 'A' invoices)",
    "non_product_stock_code": "postage, fees and other service codes are not items (Online Retail)",
    "negative_quantity": "negative quantity on a non-cancellation invoice (stock adjustment)",
    "ambiguous_local_time": "local time falls in a daylight-saving gap or overlap",
    "ts_before_1970": "ts is before 1970-01-01T00:00:00Z (belongs to no day)",
    "ts_in_future": "ts is later than the time of reading plus a small tolerance (belongs to no day yet)",
    "unreadable_file": "a landed file cannot be read or decoded at all (truncated, not UTF-8, wrong column types)",
    "missing_column": "a landed file lacks a required event column",
    "malformed_row": "a CSV record has a different number of fields than the header",
    "field_too_large": f"a CSV record has a field longer than {MAX_CSV_FIELD} characters (only that row is lost)",
}

# Unicode category Cc, the control characters; every one of them is not printable (str.isprintable).
_CONTROL = r"[\x00-\x1f\x7f-\x9f]"
_CONTROL_NAMES: dict[str, str] = {
    **{chr(c): f"U+{c:04X}" for c in [*range(0x20), *range(0x7F, 0xA0)]},
    "\x00": "NUL",
    "\t": "TAB",
    "\n": "LF",
    "\r": "CR",
}


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Half-open UTC interval ``[start, end)`` of a calendar day, as tz-aware pandas Timestamps."""
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return pd.Timestamp(start), pd.Timestamp(start + timedelta(days=1))


def empty_events() -> pd.DataFrame:
    """An empty frame with the event schema's columns and dtypes."""
    return pd.DataFrame(
        {
            "event_id": pd.Series([], dtype=object),
            "user_id": pd.Series([], dtype=object),
            "item_id": pd.Series([], dtype=object),
            "event_type": pd.Series([], dtype=object),
            "ts": pd.Series([], dtype="datetime64[us, UTC]"),
            "quantity": pd.Series([], dtype="int64"),
            "value": pd.Series([], dtype="float64"),
        }
    )


def empty_quarantine() -> pd.DataFrame:
    """An empty quarantine frame (every column text except ``source_line``)."""
    frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in QUARANTINE_COLUMNS})
    frame["source_line"] = frame["source_line"].astype("Int64")
    return frame


def quarantine_rows(rows: pd.DataFrame, reason: str, detail: str | pd.Series) -> pd.DataFrame:
    """Turn rejected rows (any columns) into quarantine rows with ``reason`` and ``detail``.

    Optional ``source_file``, ``source_line`` and ``source_sha256`` columns of ``rows`` are carried over.

    Raises:
        KeyError: if ``reason`` is not a known code of :data:`REASONS`.
    """
    if reason not in REASONS:
        raise KeyError(f"unknown quarantine reason {reason!r}; known: {sorted(REASONS)}")
    out = pd.DataFrame(index=rows.index)
    for column in EVENT_COLUMNS:
        out[column] = rows[column].map(_to_text) if column in rows else None
    out["reason"] = reason
    out["detail"] = detail
    out["source_file"] = rows["source_file"].astype(object) if "source_file" in rows else None
    out["source_sha256"] = rows["source_sha256"].astype(object) if "source_sha256" in rows else None
    out["source_line"] = (
        pd.to_numeric(rows["source_line"], errors="coerce").astype("Int64") if "source_line" in rows else pd.NA
    )
    return out.reset_index(drop=True).loc[:, list(QUARANTINE_COLUMNS)].astype({"source_line": "Int64"})


def _to_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def validate_events(frame: pd.DataFrame, day: date | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into accepted events (schema dtypes) and quarantined rows with a reason.

    The one implementation every source uses: :func:`factory_assets.data.sources.validation.validate_events`
    (checks as one DuckDB query; see there for the checks, their order, shapes, dtypes and errors).

    Returns:
        ``(accepted, quarantined)``: accepted has exactly :data:`EVENT_COLUMNS` with the documented dtypes,
        sorted by ``(ts, event_id)``; quarantined has :data:`QUARANTINE_COLUMNS`.  Every input row is in
        exactly one of the two.

    Raises:
        ValueError: if a required column is missing (the message names it).
    """
    from factory_assets.data.sources.validation import validate_events as _validate_events

    return _validate_events(frame, day)


def concat_quarantine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate quarantine frames (empty ones skipped) into :data:`QUARANTINE_COLUMNS` order."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_quarantine()
    out = pd.concat(frames, ignore_index=True).loc[:, list(QUARANTINE_COLUMNS)]
    return out.astype({"source_line": "Int64"})


def day_slices(day_numbers: np.ndarray) -> dict[int, tuple[int, int]]:
    """``{day number: (start, end)}`` row ranges of a SORTED array of day numbers (half-open ranges)."""
    if len(day_numbers) == 0:
        return {}
    uniq, starts = np.unique(day_numbers, return_index=True)
    ends = np.append(starts[1:], len(day_numbers))
    return {int(d): (int(s), int(e)) for d, s, e in zip(uniq, starts, ends)}
