"""The feature store: daily feature views in DuckDB, derived from raw events, versioned by their inputs.

Feature views (entity, timestamp column; one partition per UTC day):

``user_item_daily`` (entity user x item, ``day``)
    ``n_views``, ``n_carts``, ``n_conversions`` (purchases, or ratings >= 4 stars), ``n_returns``,
    ``quantity`` (units converted), ``value`` (money converted), ``weight`` (sum of event-type weights,
    :data:`EVENT_WEIGHTS`), ``last_ts`` (latest event), ``last_purchase_ts`` (latest purchase; NULL without one:
    what the shadow evaluation credits a served list with).
``item_daily`` (entity item, ``day``)
    ``n_users`` (distinct users with any event), ``n_converters`` (distinct converting users),
    ``n_events``, ``n_conversions``.

A view's partition only ever reads the raw partition of the same day, so a feature row for day D uses no
event after D (point-in-time by construction); the rolling window and its recency weights are applied
when a model reads a window ending on its own ``as_of`` day.  A partition's data version is
``sha256(view, code version, raw data version)``.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from factory_assets.feature_store import storage
from factory_assets.feature_store.contract import RAW_EVENTS, ledger, record_partition

USER_ITEM_DAILY = "user_item_daily"
ITEM_DAILY = "item_daily"
FEATURE_CODE_VERSION = "2"  # 2: user_item_daily.last_purchase_ts

# Event-type weights for the interaction strength (views are weak evidence, conversions strong).
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0, "return": 0.0}
RATING_POSITIVE_STARS = 4.0  # a rating counts as a conversion at or above this many stars
RATING_WEIGHTS = (5.0, 1.0)  # weight of a positive / other rating

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {USER_ITEM_DAILY} (
        day DATE NOT NULL, user_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, n_views BIGINT NOT NULL,
        n_carts BIGINT NOT NULL, n_conversions BIGINT NOT NULL, n_returns BIGINT NOT NULL,
        quantity BIGINT NOT NULL, value DOUBLE NOT NULL, weight DOUBLE NOT NULL, last_ts TIMESTAMPTZ NOT NULL,
        last_purchase_ts TIMESTAMPTZ)""",
    f"""CREATE TABLE IF NOT EXISTS {ITEM_DAILY} (
        day DATE NOT NULL, item_id VARCHAR NOT NULL, n_users BIGINT NOT NULL, n_converters BIGINT NOT NULL,
        n_events BIGINT NOT NULL, n_conversions BIGINT NOT NULL)""",
)

_CONVERSION = "(event_type = 'purchase' OR (event_type = 'rating' AND value >= $stars))"

_USER_ITEM_SQL = f"""
SELECT partition_day AS day, user_id, item_id,
       CAST(count(*) FILTER (WHERE event_type = 'view') AS BIGINT) AS n_views,
       CAST(count(*) FILTER (WHERE event_type = 'add_to_cart') AS BIGINT) AS n_carts,
       CAST(count(*) FILTER (WHERE {_CONVERSION}) AS BIGINT) AS n_conversions,
       CAST(count(*) FILTER (WHERE event_type = 'return') AS BIGINT) AS n_returns,
       CAST(coalesce(sum(quantity) FILTER (WHERE {_CONVERSION}), 0) AS BIGINT) AS quantity,
       CAST(coalesce(sum(value) FILTER (WHERE event_type = 'purchase'), 0.0) AS DOUBLE) AS value,
       CAST(sum(CASE event_type WHEN 'view' THEN $w_view WHEN 'add_to_cart' THEN $w_cart
                WHEN 'purchase' THEN $w_purchase WHEN 'return' THEN $w_return
                WHEN 'rating' THEN CASE WHEN value >= $stars THEN $w_rating_pos ELSE $w_rating_other END
                ELSE 0.0 END) AS DOUBLE) AS weight,
       max(ts) AS last_ts,
       max(ts) FILTER (WHERE event_type = 'purchase') AS last_purchase_ts
FROM {{source}} WHERE partition_day = $day{{until}}
GROUP BY partition_day, user_id, item_id
"""

_ITEM_SQL = f"""
SELECT partition_day AS day, item_id, CAST(count(DISTINCT user_id) AS BIGINT) AS n_users,
       CAST(count(DISTINCT user_id) FILTER (WHERE {_CONVERSION}) AS BIGINT) AS n_converters,
       CAST(count(*) AS BIGINT) AS n_events, CAST(count(*) FILTER (WHERE {_CONVERSION}) AS BIGINT) AS n_conversions
FROM {{source}} WHERE partition_day = $day{{until}}
GROUP BY partition_day, item_id
"""


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the feature view tables if missing (idempotent)."""
    for statement in DDL:
        con.execute(statement)


def feature_data_version(view: str, raw_data_version: str) -> str:
    """``sha256(view | code version | raw data version)``: changes exactly when its input or code changes."""
    return hashlib.sha256(f"{view}|{FEATURE_CODE_VERSION}|{raw_data_version}".encode()).hexdigest()


def build_partition(con: duckdb.DuckDBPyConnection, view: str, day: date) -> tuple[str, int]:
    """Atomically (re)compute one day of a feature view from that day's raw events.

    Returns:
        ``(data_version, row_count)``.
    Raises:
        LookupError: if the raw partition for ``day`` has never been written (no ledger row): a missing
            day must not silently become an empty feature partition.
        ValueError: for an unknown view.
    """
    if view not in (USER_ITEM_DAILY, ITEM_DAILY):
        raise ValueError(f"unknown feature view {view!r}")
    raw = ledger(con, RAW_EVENTS, day, day)
    if raw.empty:
        raise LookupError(f"raw_events partition {day.isoformat()} is missing; materialise it first")
    version = feature_data_version(view, str(raw["data_version"].iloc[0]))
    with storage.transaction(con):
        storage.clear(con, view, day=day)
        insert_view_rows(con, view, storage.into(con, view), RAW_EVENTS, day)
        rows = con.execute(f"SELECT count(*) FROM {view} WHERE day = ?", [day]).fetchone()[0]
        record_partition(con, view, day, version, rows)
    return version, int(rows)


def view_rows_sql(view: str, source: str, day: date, until: datetime | None = None) -> tuple[str, dict]:
    """``(SELECT sql, named parameters)`` of the rows of ``view`` (``user_item_daily`` or ``item_daily``) computed
    from the events of ``source`` (a table with ``raw_events``' columns) in partition ``day``, only those with
    ``ts < until`` when given: the one SQL of a daily partition and of the intraday path (``data.intraday``), so the
    two cannot compute a feature differently.  ``source`` is an identifier from code, never user input.

    Raises:
        ValueError: for another view.
    """
    if view not in (USER_ITEM_DAILY, ITEM_DAILY):
        raise ValueError(f"unknown feature view {view!r}")
    params: dict[str, object] = {"day": day, "stars": RATING_POSITIVE_STARS}
    if view == USER_ITEM_DAILY:
        sql = _USER_ITEM_SQL
        params |= {
            "w_view": EVENT_WEIGHTS["view"], "w_cart": EVENT_WEIGHTS["add_to_cart"],
            "w_purchase": EVENT_WEIGHTS["purchase"], "w_return": EVENT_WEIGHTS["return"],
            "w_rating_pos": RATING_WEIGHTS[0], "w_rating_other": RATING_WEIGHTS[1],
        }
    else:
        sql = _ITEM_SQL
    if until is not None:
        params["until"] = until
    return sql.format(source=source, until="" if until is None else " AND ts < $until"), params


def insert_view_rows(con: duckdb.DuckDBPyConnection, view: str, into: str, source: str, day: date) -> None:
    """``INSERT INTO into`` the rows of ``view`` of ``day`` from ``source`` (:func:`view_rows_sql`)."""
    sql, params = view_rows_sql(view, source, day)
    con.execute(f"INSERT INTO {into} {sql}", params)


def read_window(con: duckdb.DuckDBPyConnection, start: date, end: date) -> pd.DataFrame:
    """``user_item_daily`` rows for the inclusive day range, ``day`` as ``datetime.date``.

    Columns: ``day``, ``user_id``, ``item_id``, ``weight`` (float64), ``n_conversions`` (int64),
    ``n_views``, ``n_carts``, ``n_returns``; rows ordered by ``day``, ``user_id``, ``item_id``.

    ``day``, ``user_id`` and ``item_id`` are object columns of ``datetime.date`` / ``str`` holding one shared
    object per distinct value, not one per row: at 1M events/day a 28-day window has ~6M rows but only
    thousands of distinct ids, and a Python object per row and column was ~0.9 GiB.  The rows are streamed
    from DuckDB as Arrow record batches and the three columns dictionary-encoded there, so no per-row Python
    object is ever created (``recsys.matrix.factorize`` then maps such columns to codes by object, ~5x
    faster).  The frame is built from one 2-d array per dtype (pandas' consolidated layout), so the first
    row selection does not copy it all once more to consolidate it.
    """
    con.complete()  # finish a caller's unread execute() result: con.sql refuses a connection that holds one
    reader = con.sql(  # con.sql streams the sorted rows (execute() would materialise them once more)
        f"SELECT {', '.join(_WINDOW_COLUMNS)} FROM {USER_ITEM_DAILY} "
        "WHERE day BETWEEN ? AND ? ORDER BY day, user_id, item_id",
        params=[start, end],
    ).to_arrow_reader(_BATCH_ROWS)
    dtypes = {field.name: field.type.to_pandas_dtype() for field in reader.schema}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _WINDOW_COLUMNS}
    codes_of: dict[str, dict] = {name: {} for name in _OBJECT_COLUMNS}  # value -> code, in first-seen order
    for batch in reader:
        for name in _WINDOW_COLUMNS:
            column = batch.column(name)
            parts[name].append(_codes(column, codes_of[name]) if name in codes_of else column.to_numpy(zero_copy_only=False))
        del batch, column
    reader.close()  # DuckDB's side of the result is released before the frame is built
    n = sum(len(part) for part in parts[_WINDOW_COLUMNS[0]])
    objects = np.empty((len(_OBJECT_COLUMNS), n), dtype=object)
    for k, name in enumerate(_OBJECT_COLUMNS):
        distinct = np.empty(len(codes_of[name]), dtype=object)
        distinct[:] = list(codes_of[name])
        _fill(objects[k], parts.pop(name), lambda codes: distinct[codes])
    blocks = [pd.DataFrame(objects.T, columns=list(_OBJECT_COLUMNS), dtype=object, copy=False)]
    for names in (_FLOAT_COLUMNS, _INT_COLUMNS):
        values = np.empty((len(names), n), dtype=dtypes[names[0]])
        for k, name in enumerate(names):
            _fill(values[k], parts.pop(name))
        blocks.append(pd.DataFrame(values.T, columns=list(names), copy=False))
    return pd.concat(blocks, axis=1, copy=False)


_OBJECT_COLUMNS = ("day", "user_id", "item_id")
_FLOAT_COLUMNS = ("weight",)
_INT_COLUMNS = ("n_conversions", "n_views", "n_carts", "n_returns")
_WINDOW_COLUMNS = (*_OBJECT_COLUMNS, *_FLOAT_COLUMNS, *_INT_COLUMNS)
_BATCH_ROWS = 1 << 20


def _codes(column, codes_of: dict) -> np.ndarray:
    """Each value's code in ``codes_of`` (value -> code, new values appended), int32, via Arrow's dictionary."""
    if column.null_count:  # the feature tables' columns are NOT NULL; value by value for anything else
        return np.fromiter((codes_of.setdefault(v, len(codes_of)) for v in column.to_pylist()), dtype=np.int32,
                           count=len(column))
    encoded = column.dictionary_encode()
    batch_codes = np.fromiter((codes_of.setdefault(v, len(codes_of)) for v in encoded.dictionary.to_pylist()),
                              dtype=np.int32, count=len(encoded.dictionary))
    return batch_codes[encoded.indices.to_numpy(zero_copy_only=False)]


def _fill(out: np.ndarray, parts: list[np.ndarray], convert=None) -> None:
    """Write the batches' pieces one after another into ``out``, freeing each piece once written."""
    offset = 0
    while parts:
        piece = parts.pop(0)
        out[offset:offset + len(piece)] = piece if convert is None else convert(piece)
        offset += len(piece)
        del piece
    assert offset == len(out)


def window_manifest(con: duckdb.DuckDBPyConnection, end: date, days: int) -> dict:
    """The feature partitions a model trained on the ``days`` days ending ``end`` (inclusive) would read.

    Returns a JSON-able dict: ``start``, ``end``, ``days``, ``complete`` (every day of every view present
    in the ledger), ``missing`` (``{view: [iso days]}``), ``inputs`` (``[{asset, partition, data_version,
    row_count}]``), ``window_version`` (sha256 of the inputs' data versions).

    A read of the ledger only: the ``training_window`` asset stores the manifest in the model registry's store
    (:func:`factory_assets.ml.registry.save_window_manifest`), not here.
    """
    start = end - timedelta(days=days - 1)
    expected = [start + timedelta(days=i) for i in range(days)]
    inputs, missing = [], {}
    for view in (USER_ITEM_DAILY, ITEM_DAILY):
        present = ledger(con, view, start, end).set_index("partition_day")
        missing[view] = [d.isoformat() for d in expected if d not in present.index]
        inputs += [
            {"asset": view, "partition": d.isoformat(), "data_version": str(r["data_version"]), "row_count": int(r["row_count"])}
            for d, r in present.iterrows()
        ]
    digest = hashlib.sha256("|".join(f"{i['asset']}:{i['partition']}:{i['data_version']}" for i in inputs).encode())
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "days": days,
        "complete": not any(missing.values()),
        "missing": missing,
        "inputs": inputs,
        "window_version": digest.hexdigest(),
    }


# --------------------------------------------------------------------------- derived views (features.views)
# Tables of the derived daily views built by :func:`factory_assets.feature_store.views.build_view_partition`, the
# input partitions each of their partitions read (``input_data_version`` NULL = the input was missing and
# counted as zero), and the metadata of the online views written by
# :func:`factory_assets.feature_store.retrieval.materialize_online`.
USER_FEATURES = "user_features"
ITEM_FEATURES = "item_features"
FEATURE_INPUTS = "feature_partition_inputs"
ONLINE_VIEWS = "online_feature_views"
_DERIVED_DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {USER_FEATURES} (
        day DATE NOT NULL, user_id VARCHAR NOT NULL, n_events BIGINT NOT NULL, n_conversions BIGINT NOT NULL,
        n_distinct_items BIGINT NOT NULL, value DOUBLE NOT NULL, last_ts TIMESTAMPTZ NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {ITEM_FEATURES} (
        day DATE NOT NULL, item_id VARCHAR NOT NULL, n_users BIGINT NOT NULL, n_converters BIGINT NOT NULL,
        converters_7d BIGINT NOT NULL, converters_prev_7d BIGINT NOT NULL, trend_7d DOUBLE NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {FEATURE_INPUTS} (
        asset VARCHAR NOT NULL, partition_day DATE NOT NULL, input_asset VARCHAR NOT NULL,
        input_partition DATE NOT NULL, input_data_version VARCHAR,
        PRIMARY KEY (asset, partition_day, input_asset, input_partition))""",
    f"""CREATE TABLE IF NOT EXISTS {ONLINE_VIEWS} (
        view_name VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, as_of TIMESTAMPTZ NOT NULL,
        window_start DATE NOT NULL, window_end DATE NOT NULL, feature_version VARCHAR NOT NULL,
        row_count BIGINT NOT NULL, manifest VARCHAR NOT NULL, materialized_at TIMESTAMPTZ NOT NULL)""",
)
DDL = (*DDL, *_DERIVED_DDL)
for _table in (USER_ITEM_DAILY, ITEM_DAILY, USER_FEATURES, ITEM_FEATURES):
    storage.declare(_table, ("day",))
storage.declare(FEATURE_INPUTS, ("asset", "partition_day"))
storage.declare(ONLINE_VIEWS, ("view_name",))
