"""Point-in-time feature retrieval for training, the online view for serving, and feature versions.

The point-in-time rule: the daily partition of UTC day ``D`` is complete only when ``D`` has ended, so a
row with timestamp ``as_of`` may read day ``D`` only if ``D + 1 day <= as_of``, i.e. ``D <= as_of_day - 1``
where ``as_of_day`` is the UTC date of ``as_of`` (an ``as_of`` of 12:00 on day 3 does not see day 3, an
``as_of`` of 00:00 on day 4 does), and only within the view's TTL: ``D >= as_of_day - ttl_days``.  So a
row reads the ``ttl_days`` days ``as_of_day - ttl_days .. as_of_day - 1`` (:func:`feature_window`); every
event behind them happened before ``as_of_day`` 00:00 UTC <= ``as_of``.

Aggregation over those days (:attr:`FeatureView.aggregations`): ``sum`` for counts and money
(``n_*``, ``quantity``, ``value``, ``weight``; ``item_features.n_users`` is therefore user-days),
``max`` for timestamps (``last_ts``) and ``last`` (value of the latest day found) for features that already
summarise a window (``item_features.converters_7d``, ``converters_prev_7d``, ``trend_7d``).  Result
columns are ``<view>__<feature>`` plus ``<view>__days`` (rows found, i.e. days with data for the entity).
Where no day is found numeric features are 0 (int64 stays int64, float64 stays float64) and timestamps
are NaT.

Training (:func:`get_training_frame`) and serving (:func:`materialize_online` then
:func:`get_online_features`) run the same SQL (:func:`_aggregate_view`), so they cannot compute a feature
differently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone

import duckdb
import pandas as pd

from factory_assets.feature_store import storage
from factory_assets.feature_store.store import ONLINE_VIEWS
from factory_assets.feature_store.views import FEATURE_VIEWS, FeatureView, get_view
from factory_assets.feature_store.contract import ledger

ONLINE_PREFIX = "online_"
_ENTITY_ROWS = "_feature_entity_rows"
_ONLINE_KEYS = "_online_entity_keys"
_ONLINE_FRAME = "_online_frame"
_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
_TIMESTAMP_TYPES = {"TIMESTAMP WITH TIME ZONE", "TIMESTAMP", "DATE"}


def feature_columns(view: str | FeatureView) -> list[str]:
    """Result column names of a view: ``<view>__<feature>`` for each feature, then ``<view>__days``."""
    v = get_view(view)
    return [f"{v.name}__{f}" for f in v.features] + [f"{v.name}__days"]


def online_table(view: str | FeatureView) -> str:
    """Name of the online table of a view: ``online_<view>``."""
    return ONLINE_PREFIX + get_view(view).name


def _utc(as_of: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(as_of)
    if ts is pd.NaT or pd.isna(ts):
        raise ValueError("as_of is missing")
    if ts.tzinfo is None:
        raise ValueError(f"as_of {ts} is naive; pass a tz-aware (UTC) timestamp")
    return ts.tz_convert("UTC")


def feature_window(view: str | FeatureView, as_of: datetime | pd.Timestamp, days: int | None = None) -> tuple[date, date]:
    """Inclusive UTC day range ``(as_of_day - days, as_of_day - 1)`` a row at ``as_of`` reads.

    ``days`` defaults to the view's ``ttl_days``.

    Raises:
        ValueError: naive or missing ``as_of``, ``days`` outside ``1 .. ttl_days``.
    """
    v = get_view(view)
    days = _window(v, days)
    as_of_day = _utc(as_of).date()
    return as_of_day - timedelta(days=days), as_of_day - timedelta(days=1)


def _window(view: FeatureView, days: int | None) -> int:
    if days is None:
        return view.ttl_days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= view.ttl_days:
        raise ValueError(f"{view.name}: window must be an int in 1..{view.ttl_days} (its TTL), got {days!r}")
    return days


def _column_types(con: duckdb.DuckDBPyConnection, view: FeatureView) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ?", [view.name]
    ).fetchall()
    types = {name: data_type for name, data_type in rows}
    absent = [c for c in (view.timestamp, *view.entity, *view.features) if c not in types]
    if absent:
        raise LookupError(f"feature view table {view.name!r} lacks columns {absent}; run store.ensure_schema")
    return types


def _filled(expr: str, sql_type: str) -> str:
    """The one null-filling rule of training and serving: numbers 0 (typed as the source), timestamps NULL."""
    if sql_type in _INTEGER_TYPES:
        return f"CAST(coalesce({expr}, 0) AS BIGINT)"
    if sql_type in _FLOAT_TYPES:
        return f"CAST(coalesce({expr}, 0) AS DOUBLE)"
    if sql_type in _TIMESTAMP_TYPES:
        return expr
    raise TypeError(f"feature type {sql_type} is not supported")


def _aggregate_view(con: duckdb.DuckDBPyConnection, view: FeatureView, window: int) -> pd.DataFrame:
    """One range-join query of ``view`` against the registered :data:`_ENTITY_ROWS` (``_row``, entity
    columns, ``_as_of`` tz-aware): one row per ``_row`` (ordered) with the :func:`feature_columns`."""
    types = _column_types(con, view)
    day = view.timestamp
    selects = []
    for feature in view.features:
        agg = view.aggregation(feature)
        raw = {"sum": f"sum(v.{feature})", "max": f"max(v.{feature})", "last": f"arg_max(v.{feature}, v.{day})"}[agg]
        selects.append(f'{_filled(raw, types[feature])} AS "{view.name}__{feature}"')
    selects.append(f'CAST(count(v.{day}) AS BIGINT) AS "{view.name}__days"')
    keys = ", ".join(f"CAST(e.{c} AS VARCHAR) AS {c}" for c in view.entity)
    on = " AND ".join(f"v.{c} = e.{c}" for c in view.entity)
    sql = f"""
        WITH e AS (
            SELECT e._row, {keys}, CAST(timezone('UTC', e._as_of) AS DATE) AS _as_of_day FROM {_ENTITY_ROWS} e
        )
        SELECT e._row, {', '.join(selects)}
        FROM e LEFT JOIN {view.name} v
          ON {on}
         AND v.{day} >= e._as_of_day - CAST($window AS INTEGER)
         AND v.{day} < e._as_of_day
        GROUP BY e._row
        ORDER BY e._row
    """
    return con.execute(sql, {"window": window}).df()


def _as_of_column(column: pd.Series, name: str) -> pd.Series:
    """``column`` as ``datetime64[.., UTC]``; tz-aware values of mixed zones are accepted, naive ones are not."""
    if column.isna().any():
        raise ValueError(f"{name!r} has missing timestamps")
    if column.dtype == object and len(column):
        if any(getattr(v, "tzinfo", None) is None for v in column):
            raise ValueError(f"{name!r} must be tz-aware (UTC) timestamps; found naive values")
        column = pd.to_datetime(column, utc=True)
    if not isinstance(column.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{name!r} must be tz-aware (UTC) timestamps, got {column.dtype}")
    return column.dt.tz_convert("UTC")


def get_training_frame(
    con: duckdb.DuckDBPyConnection,
    entity_rows: pd.DataFrame,
    as_of_column: str = "as_of",
    views: Iterable[str | FeatureView] | None = None,
    windows_days: int | Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Point-in-time correct features for each entity row (see the module docstring for the rule).

    Args:
        entity_rows: one row per training example with the entity columns of the requested views
            (``user_id`` and/or ``item_id``, str) and a tz-aware timestamp column ``as_of_column`` (any
            time zone; converted to UTC, whose date decides the days read).
        views: view names (or FeatureViews); default: every registered view whose entity columns are all
            in ``entity_rows``.
        windows_days: days to read back from ``as_of`` instead of each view's TTL: one int for all views or
            ``{view: days}``; each must be within ``1 .. ttl_days``.

    Returns:
        A copy of ``entity_rows`` (same index, order and columns) with, per view, the columns
        ``<view>__<feature>`` (int64 / float64 with 0 where nothing was found, ``datetime64[us, UTC]``
        with NaT) and ``<view>__days`` (int64).  One parameterised DuckDB range-join query per view
        (plus a catalog lookup of the view table's column types); identifiers come only from the
        :class:`FeatureView` definitions, values (the window) are parameters.

    Raises:
        ValueError: naive or missing ``as_of`` values, a view whose entity columns are missing, no view
            applicable, a bad window, or a result column that already exists in ``entity_rows``.
        LookupError: a view's table is missing.
    """
    if as_of_column not in entity_rows.columns:
        raise ValueError(f"entity_rows has no {as_of_column!r} column")
    if views is None:
        chosen = [v for v in FEATURE_VIEWS.values() if set(v.entity) <= set(entity_rows.columns)]
    else:
        chosen = [get_view(v) for v in views]
    if not chosen:
        raise ValueError(f"no feature view fits the columns {list(entity_rows.columns)}")
    as_of = _as_of_column(entity_rows[as_of_column], as_of_column)
    out = entity_rows.copy()
    for view in chosen:
        missing = [c for c in view.entity if c not in entity_rows.columns]
        if missing:
            raise ValueError(f"feature view {view.name!r} needs entity columns {missing}")
        clash = [c for c in feature_columns(view) if c in out.columns]
        if clash:
            raise ValueError(f"entity_rows already has columns {clash}")
        days = windows_days.get(view.name) if isinstance(windows_days, Mapping) else windows_days
        window = _window(view, days)
        rows = pd.DataFrame({c: entity_rows[c].to_numpy() for c in view.entity})
        rows.insert(0, "_row", range(len(rows)))
        rows["_as_of"] = as_of.array
        con.register(_ENTITY_ROWS, rows)
        try:
            result = _aggregate_view(con, view, window)
        finally:
            con.unregister(_ENTITY_ROWS)
        for column in feature_columns(view):
            out[column] = result[column].array
    return out


def feature_view_version(con: duckdb.DuckDBPyConnection, view: str | FeatureView, start: date, end: date) -> str:
    """sha256 (hex) over the ledger data versions of a view's partitions in ``start .. end`` (inclusive).

    The digest text is ``"<view>|" + "|".join("<iso day>:<data version>")`` over the partitions present in
    the ledger in day order, so it changes when any partition in the range is rebuilt with other content,
    appears (back-fill) or disappears, and a model manifest can name exactly the feature data it read.
    """
    v = get_view(view)
    present = ledger(con, v.name, start, end)
    text = "|".join(f"{d.isoformat()}:{dv}" for d, dv in zip(present["partition_day"], present["data_version"]))
    return hashlib.sha256(f"{v.name}|{text}".encode()).hexdigest()


def purchase_history(con: duckdb.DuckDBPyConnection, end: date, days: int) -> tuple[pd.DataFrame, dict]:
    """The converting ``user_item_daily`` rows of the ``days`` days ending ``end`` (inclusive), and their inputs.

    The long purchase history of the learned ranker (``recsys.candidates.long_history`` reads, per fit, only
    the rows of the ``history_days`` days ending that fit's as-of day, so the frame can reach ``end``).  Best
    effort by design: partitions that were never ingested are simply absent (``factory run --start`` may
    begin later); what was read is in the returned inputs, so a manifest names it and a retrain can refuse
    when it changed.

    Returns:
        ``(frame, inputs)``: ``frame`` columns ``day`` (``datetime.date``), ``user_id``, ``item_id`` (str),
        ``n_conversions`` (int64), rows with ``n_conversions > 0`` only; ``inputs`` ``{"start", "end", "days",
        "inputs": [{asset, partition, data_version, row_count}], "missing": [iso days]}``: the ledger
        partitions in the range, and the days of the range that were never materialised.
    Raises:
        ValueError: if ``days`` < 1.
    """
    if days < 1:
        raise ValueError(f"purchase history needs days >= 1, got {days}")
    from factory_assets.feature_store.store import USER_ITEM_DAILY

    start = end - timedelta(days=days - 1)
    frame = con.execute(
        f"SELECT day, user_id, item_id, n_conversions FROM {USER_ITEM_DAILY} "
        "WHERE day BETWEEN ? AND ? AND n_conversions > 0 ORDER BY day, user_id, item_id",
        [start, end],
    ).df()
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    present = ledger(con, USER_ITEM_DAILY, start, end)
    inputs = [
        {"asset": USER_ITEM_DAILY, "partition": d.isoformat(), "data_version": str(dv), "row_count": int(n)}
        for d, dv, n in zip(present["partition_day"], present["data_version"], present["row_count"])
    ]
    have = set(present["partition_day"])
    missing = [d.isoformat() for d in (start + timedelta(days=i) for i in range(days)) if d not in have]
    return frame, {"start": start.isoformat(), "end": end.isoformat(), "days": days, "inputs": inputs, "missing": missing}


def materialize_online(con: duckdb.DuckDBPyConnection, view_name: str, as_of: datetime | pd.Timestamp) -> dict:
    """Write ``online_<view>``: the features of every entity with a row in the view's window at ``as_of``.

    The values come from :func:`get_training_frame` (same SQL, same window, same fill rule) for the
    entities found in ``feature_window(view, as_of)``; the table has the entity columns (VARCHAR), the
    :func:`feature_columns` and ``as_of`` (TIMESTAMPTZ).  Replaced atomically together with its row in
    ``online_feature_views``.

    Returns:
        The manifest (JSON-able): ``view``, ``table``, ``as_of`` (ISO UTC), ``window_start``,
        ``window_end``, ``feature_version`` (:func:`feature_view_version` of the window), ``inputs``
        (``[{partition, data_version, row_count}]`` from the ledger), ``missing`` (window days with no
        partition), ``row_count``.

    Raises:
        ValueError: unknown view, naive ``as_of``.
    """
    view = get_view(view_name)
    as_of = _utc(as_of)
    start, end = feature_window(view, as_of)
    keys = ", ".join(view.entity)
    entities = con.execute(
        f"SELECT DISTINCT {keys} FROM {view.name} WHERE {view.timestamp} BETWEEN ? AND ? ORDER BY {keys}", [start, end]
    ).df()
    entities["as_of"] = pd.Series([as_of] * len(entities), index=entities.index, dtype="datetime64[us, UTC]")
    frame = get_training_frame(con, entities, as_of_column="as_of", views=(view.name,))
    present = ledger(con, view.name, start, end)
    expected = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    manifest = {
        "view": view.name,
        "table": online_table(view),
        "as_of": as_of.isoformat(),
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "feature_version": feature_view_version(con, view, start, end),
        "inputs": [
            {"partition": d.isoformat(), "data_version": str(dv), "row_count": int(n)}
            for d, dv, n in zip(present["partition_day"], present["data_version"], present["row_count"])
        ],
        "missing": [d.isoformat() for d in expected if d not in set(present["partition_day"])],
        "row_count": len(frame),
    }
    columns = [f"CAST({c} AS VARCHAR) AS {c}" for c in view.entity]
    columns += [f'"{c}"' for c in feature_columns(view)] + ["CAST(as_of AS TIMESTAMPTZ) AS as_of"]
    con.register(_ONLINE_FRAME, frame)
    try:
        with storage.transaction(con):
            storage.replace_table(con, online_table(view), f"SELECT {', '.join(columns)} FROM {_ONLINE_FRAME}")
            storage.clear(con, ONLINE_VIEWS, view_name=view.name)
            con.execute(
                f"INSERT INTO {storage.into(con, ONLINE_VIEWS)} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [view.name, online_table(view), as_of.to_pydatetime(), start, end, manifest["feature_version"],
                 len(frame), json.dumps(manifest), datetime.now(timezone.utc)],
            )
    finally:
        con.unregister(_ONLINE_FRAME)
    return manifest


def online_manifest(con: duckdb.DuckDBPyConnection, view_name: str) -> dict | None:
    """The manifest of the current ``online_<view>`` (see :func:`materialize_online`), or None."""
    row = con.execute(f"SELECT manifest FROM {ONLINE_VIEWS} WHERE view_name = ?", [get_view(view_name).name]).fetchone()
    return json.loads(row[0]) if row else None


def get_online_features(
    con: duckdb.DuckDBPyConnection, view_name: str, entity_keys: pd.DataFrame | Sequence
) -> pd.DataFrame:
    """Features of the given entities from ``online_<view>``, in the order asked.

    Args:
        entity_keys: a frame with the view's entity columns, or for a one-column entity a sequence of keys,
            for a multi-column entity a sequence of tuples in ``view.entity`` order.

    Returns:
        Columns: the entity columns (str), :func:`feature_columns` (dtypes as in
        :func:`get_training_frame`) and ``as_of`` (``datetime64[us, UTC]``, the materialised ``as_of``).
        An entity absent from the online table gets what training gets for an entity with no rows in its
        window: zeros, NaT and ``<view>__days == 0``.

    Raises:
        LookupError: the view was never materialised online.
        ValueError: unknown view or missing entity columns.
    """
    view = get_view(view_name)
    meta = con.execute(f"SELECT as_of FROM {ONLINE_VIEWS} WHERE view_name = ?", [view.name]).fetchone()
    if meta is None:
        raise LookupError(f"online view of {view.name!r} is not materialised; run materialize_online first")
    if isinstance(entity_keys, pd.DataFrame):
        missing = [c for c in view.entity if c not in entity_keys.columns]
        if missing:
            raise ValueError(f"entity_keys lacks entity columns {missing}")
        keys = pd.DataFrame({c: entity_keys[c].to_numpy() for c in view.entity})
    else:
        values = [k if isinstance(k, tuple) else (k,) for k in entity_keys]
        keys = pd.DataFrame(values, columns=list(view.entity)) if values else pd.DataFrame(columns=list(view.entity))
    keys = keys.astype(object)
    keys.insert(0, "_row", range(len(keys)))
    types = _column_types(con, view)
    feature_types = [types[f] for f in view.features] + ["BIGINT"]
    selects = [f"CAST(k.{c} AS VARCHAR) AS {c}" for c in view.entity]
    for column, sql_type in zip(feature_columns(view), feature_types):
        selects.append(f'{_filled(f"o.{column}", sql_type)} AS "{column}"')
    selects.append("CAST($as_of AS TIMESTAMPTZ) AS as_of")
    on = " AND ".join(f"o.{c} = CAST(k.{c} AS VARCHAR)" for c in view.entity)
    con.register(_ONLINE_KEYS, keys)
    try:
        result = con.execute(
            f"SELECT {', '.join(selects)} FROM {_ONLINE_KEYS} k LEFT JOIN {online_table(view)} o ON {on} ORDER BY k._row",
            {"as_of": meta[0]},
        ).df()
    finally:
        con.unregister(_ONLINE_KEYS)
    return result
