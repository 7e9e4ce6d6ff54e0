"""Named feature views: what each daily feature table holds, and the builders of the derived views.

A :class:`FeatureView` names a DuckDB table with one partition per UTC day (its ``timestamp`` column,
``day``), the entity columns that key a row within a day, the feature columns, how point-in-time
retrieval aggregates each feature over days (:mod:`factory_assets.feature_store.retrieval`) and a TTL: rows
older than ``ttl_days`` days before an ``as_of`` are never read for it.

Registered views (:data:`FEATURE_VIEWS`):

``user_item_daily`` (user x item; :mod:`~factory_assets.feature_store.store`, from that day's raw events)
``item_daily`` (item; :mod:`~factory_assets.feature_store.store`, from that day's raw events)
``user_features`` (user; from the ``raw_events`` partition of the same day)
    ``n_events`` (all events), ``n_conversions`` (purchases and ratings >= 4 stars, as in
    ``user_item_daily``), ``n_distinct_items`` (items with any event), ``value`` (money of purchases),
    ``last_ts`` (latest event).
``item_features`` (item; from the 14 ``item_daily`` partitions ``day - 13 .. day``)
    ``n_users``, ``n_converters`` (that day's distinct users / converting users, from ``item_daily``),
    ``converters_7d`` (sum of daily ``n_converters`` over ``day - 6 .. day``, i.e. converter-days, not
    distinct users over the week), ``converters_prev_7d`` (the same over ``day - 13 .. day - 7``) and the
    popularity trend ``trend_7d = (converters_7d - converters_prev_7d) / (converters_prev_7d + 1)``:
    0 = flat, > 0 rising, -x/(x+1) when x converter-days dropped to none; defined when the previous week is 0.
    A row exists for every item with a row in any of the 14 input partitions (so an item that stopped
    selling gets zeros for the day and a falling trend).

Missing inputs: the partition of the day itself is required (:func:`build_view_partition` raises
``LookupError``).  ``item_features`` also reads the 13 days before; near the start of the data (or where
a day was never ingested) those partitions are missing: they count as zero converters, and which ones
were missing is recorded in ``feature_partition_inputs`` (``input_data_version`` NULL; see
:func:`partition_inputs`, :func:`missing_inputs`).  They are part of the data version too, so when a
missing day is back-filled the version changes and :func:`is_stale` says to rebuild.

Data version of a derived partition: ``sha256("<view>|<view version>|" + "|".join("<input asset>:<iso
day>:<input data version or 'missing'>"))`` over its input partitions in day order, the input versions
read from the partition ledger.  It changes exactly when an input partition, its presence, or the view's
code version changes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, timedelta

import duckdb
import pandas as pd

from factory_assets.feature_store import storage, store
from factory_assets.feature_store.store import (
    FEATURE_INPUTS,
    ITEM_DAILY,
    ITEM_FEATURES,
    USER_FEATURES,
    USER_ITEM_DAILY,
)
from factory_assets.feature_store.contract import LEDGER, RAW_EVENTS, record_partition

AGGREGATIONS: tuple[str, ...] = ("sum", "max", "last")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
ITEM_TREND_DAYS = 7  # each half of the popularity trend
ITEM_FEATURES_LOOKBACK = 2 * ITEM_TREND_DAYS - 1  # item_features(D) reads item_daily D-13 .. D
DERIVED_CODE_VERSION = "1"


@dataclass(frozen=True)
class FeatureView:
    """A daily feature table: ``name`` (table), ``entity`` (key columns), ``timestamp`` (the DATE column of
    the UTC partition day), ``ttl_days`` (retrieval reads at most this many days before ``as_of``),
    ``features`` (value columns), ``description``, ``version`` (code version of its builder).

    ``aggregations`` (optional, aligned with ``features``) says how retrieval combines a feature's daily
    rows: ``sum`` (counts, money), ``max`` (timestamps) or ``last`` (the value of the latest day, for
    features that already summarise a window); by default ``max`` for names ending in ``_ts`` and ``sum``
    otherwise.

    Raises:
        ValueError: a name that is not a plain lower-case SQL identifier, ``ttl_days < 1``, an unknown
            aggregation, or ``aggregations`` not aligned with ``features``.
    """

    name: str
    entity: tuple[str, ...]
    timestamp: str
    ttl_days: int
    features: tuple[str, ...]
    description: str
    version: str
    aggregations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for identifier in (self.name, self.timestamp, *self.entity, *self.features):
            if not _IDENTIFIER.match(identifier):
                raise ValueError(f"feature view {self.name!r}: {identifier!r} is not a plain SQL identifier")
        if not self.entity or not self.features:
            raise ValueError(f"feature view {self.name!r} needs entity and feature columns")
        if self.ttl_days < 1:
            raise ValueError(f"feature view {self.name!r}: ttl_days must be >= 1, got {self.ttl_days}")
        aggregations = self.aggregations or tuple("max" if f.endswith("_ts") else "sum" for f in self.features)
        if len(aggregations) != len(self.features) or set(aggregations) - set(AGGREGATIONS):
            raise ValueError(f"feature view {self.name!r}: aggregations {aggregations} do not fit {self.features}")
        object.__setattr__(self, "aggregations", tuple(aggregations))

    def aggregation(self, feature: str) -> str:
        """How retrieval combines ``feature`` over days: ``sum``, ``max`` or ``last``."""
        return self.aggregations[self.features.index(feature)]


FEATURE_VIEWS: dict[str, FeatureView] = {
    view.name: view
    for view in (
        FeatureView(
            name=USER_ITEM_DAILY,
            entity=("user_id", "item_id"),
            timestamp="day",
            ttl_days=28,
            features=("n_views", "n_carts", "n_conversions", "n_returns", "quantity", "value", "weight", "last_ts"),
            description="user x item per day: counts by event type, conversions, units, money, weighted strength",
            version=store.FEATURE_CODE_VERSION,
        ),
        FeatureView(
            name=ITEM_DAILY,
            entity=("item_id",),
            timestamp="day",
            ttl_days=28,
            features=("n_users", "n_converters", "n_events", "n_conversions"),
            description="item per day: distinct users and converters, events, conversions",
            version=store.FEATURE_CODE_VERSION,
        ),
        FeatureView(
            name=USER_FEATURES,
            entity=("user_id",),
            timestamp="day",
            ttl_days=28,
            features=("n_events", "n_conversions", "n_distinct_items", "value", "last_ts"),
            description="user per day: events, conversions, distinct items, money, last event (from raw_events)",
            version=DERIVED_CODE_VERSION,
        ),
        FeatureView(
            name=ITEM_FEATURES,
            entity=("item_id",),
            timestamp="day",
            ttl_days=7,
            features=("n_users", "n_converters", "converters_7d", "converters_prev_7d", "trend_7d"),
            description="item per day: users, converters and the 7-day vs previous-7-day converter trend "
            "(from the 14 item_daily partitions ending that day)",
            version=DERIVED_CODE_VERSION,
            aggregations=("sum", "sum", "last", "last", "last"),
        ),
    )
}

DERIVED_VIEWS: tuple[str, ...] = (USER_FEATURES, ITEM_FEATURES)
# Input asset and how many days before the partition day it reads (the day itself is always required).
_INPUTS: dict[str, tuple[str, int]] = {USER_FEATURES: (RAW_EVENTS, 0), ITEM_FEATURES: (ITEM_DAILY, ITEM_FEATURES_LOOKBACK)}


def get_view(view: str | FeatureView) -> FeatureView:
    """The registered :class:`FeatureView` of a name (a FeatureView is returned as is).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(view, FeatureView):
        return view
    try:
        return FEATURE_VIEWS[view]
    except KeyError:
        raise ValueError(f"unknown feature view {view!r}; known: {', '.join(FEATURE_VIEWS)}") from None


def input_partitions(view_name: str, day: date) -> list[tuple[str, date]]:
    """``[(input asset, input day)]`` a derived view's partition ``day`` reads, oldest first (``day`` last).

    Raises:
        ValueError: for a view that is not derived (:data:`DERIVED_VIEWS`).
    """
    if view_name not in _INPUTS:
        raise ValueError(f"{view_name!r} is not a derived feature view ({', '.join(DERIVED_VIEWS)})")
    asset, lookback = _INPUTS[view_name]
    return [(asset, day - timedelta(days=back)) for back in range(lookback, -1, -1)]


def _resolve_inputs(con: duckdb.DuckDBPyConnection, view_name: str, day: date) -> tuple[str, list[tuple[str, date, str | None]]]:
    """The data version of ``(view, day)`` from the current ledger, and ``[(asset, day, version or None)]``."""
    view = get_view(view_name)
    wanted = input_partitions(view_name, day)
    asset = wanted[0][0]
    rows = con.execute(
        f"SELECT partition_day, data_version FROM {LEDGER} WHERE asset = ? AND partition_day BETWEEN ? AND ?",
        [asset, wanted[0][1], day],
    ).fetchall()
    versions = {d: v for d, v in rows}
    inputs = [(a, d, versions.get(d)) for a, d in wanted]
    text = "|".join(f"{a}:{d.isoformat()}:{v if v is not None else 'missing'}" for a, d, v in inputs)
    return hashlib.sha256(f"{view.name}|{view.version}|{text}".encode()).hexdigest(), inputs


def expected_data_version(con: duckdb.DuckDBPyConnection, view_name: str, day: date) -> str:
    """The data version a derived partition built now would get (from the ledger; builds nothing).

    Raises:
        ValueError: for a view that is not derived.
    """
    return _resolve_inputs(con, view_name, day)[0]


_CONVERSION = store._CONVERSION  # one definition of a conversion for every view  # noqa: SLF001

_USER_FEATURES_SQL = f"""
INSERT INTO {{into}}
SELECT partition_day, user_id, count(*), count(*) FILTER (WHERE {_CONVERSION}), count(DISTINCT item_id),
       coalesce(sum(value) FILTER (WHERE event_type = 'purchase'), 0.0), max(ts)
FROM {RAW_EVENTS} WHERE partition_day = $day
GROUP BY partition_day, user_id
"""

_ITEM_FEATURES_SQL = f"""
INSERT INTO {{into}}
SELECT $day, item_id, n_users, n_converters, converters_7d, converters_prev_7d,
       (converters_7d - converters_prev_7d) / (converters_prev_7d + 1.0)
FROM (
    SELECT item_id,
           CAST(coalesce(sum(n_users) FILTER (WHERE day = $day), 0) AS BIGINT) AS n_users,
           CAST(coalesce(sum(n_converters) FILTER (WHERE day = $day), 0) AS BIGINT) AS n_converters,
           CAST(coalesce(sum(n_converters) FILTER (WHERE day >= $recent_start), 0) AS BIGINT) AS converters_7d,
           CAST(coalesce(sum(n_converters) FILTER (WHERE day < $recent_start), 0) AS BIGINT) AS converters_prev_7d
    FROM {ITEM_DAILY} WHERE day BETWEEN $start AND $day
    GROUP BY item_id
)
"""


def build_view_partition(con: duckdb.DuckDBPyConnection, view_name: str, day: date) -> tuple[str, int]:
    """Atomically (re)compute one UTC day of a feature view; return ``(data_version, row_count)``.

    Derived views (``user_features``, ``item_features``): one transaction deletes the day, inserts it with
    SQL, records the input partitions read (``feature_partition_inputs``) and the ledger row; a failure
    rolls back and leaves the previous version.  ``user_item_daily`` / ``item_daily`` are delegated to
    :func:`factory_assets.feature_store.store.build_partition`.

    Raises:
        LookupError: the input partition of ``day`` itself is missing from the ledger (``raw_events`` for
            ``user_features``, ``item_daily`` for ``item_features``); earlier missing ``item_daily`` days
            count as zero and are recorded, see the module docstring.
        ValueError: for an unknown view.
    """
    view = get_view(view_name)
    if view.name not in DERIVED_VIEWS:
        return store.build_partition(con, view.name, day)
    version, inputs = _resolve_inputs(con, view.name, day)
    asset, _, own = inputs[-1]
    if own is None:
        raise LookupError(f"{asset} partition {day.isoformat()} is missing; materialise it before {view.name}")
    if view.name == USER_FEATURES:
        sql, params = _USER_FEATURES_SQL, {"day": day, "stars": store.RATING_POSITIVE_STARS}
    else:
        sql = _ITEM_FEATURES_SQL
        params = {"day": day, "start": inputs[0][1], "recent_start": day - timedelta(days=ITEM_TREND_DAYS - 1)}
    with storage.transaction(con):
        storage.clear(con, view.name, **{view.timestamp: day})
        con.execute(sql.format(into=storage.into(con, view.name)), params)
        rows = con.execute(f"SELECT count(*) FROM {view.name} WHERE {view.timestamp} = ?", [day]).fetchone()[0]
        storage.clear(con, FEATURE_INPUTS, asset=view.name, partition_day=day)
        con.executemany(
            f"INSERT INTO {storage.into(con, FEATURE_INPUTS)} VALUES (?, ?, ?, ?, ?)",
            [[view.name, day, a, d, v] for a, d, v in inputs],
        )
        record_partition(con, view.name, day, version, rows)
    return version, int(rows)


def partition_inputs(con: duckdb.DuckDBPyConnection, view_name: str, day: date) -> pd.DataFrame:
    """The input partitions the stored ``(view, day)`` partition was built from, oldest first.

    Columns: ``input_asset`` (str), ``input_partition`` (``datetime.date``), ``input_data_version`` (str,
    None where the input was missing), ``missing`` (bool).  Empty if the partition was never built.
    """
    frame = con.execute(
        f"SELECT input_asset, input_partition, input_data_version FROM {FEATURE_INPUTS} "
        "WHERE asset = ? AND partition_day = ? ORDER BY input_partition, input_asset",
        [view_name, day],
    ).df()
    frame["input_partition"] = pd.to_datetime(frame["input_partition"]).dt.date
    frame["input_data_version"] = frame["input_data_version"].astype(object).where(frame["input_data_version"].notna(), None)
    frame["missing"] = frame["input_data_version"].isna()
    return frame


def missing_inputs(con: duckdb.DuckDBPyConnection, view_name: str, day: date) -> list[date]:
    """Input days that were missing (counted as zero) when the stored ``(view, day)`` partition was built."""
    frame = partition_inputs(con, view_name, day)
    return list(frame.loc[frame["missing"], "input_partition"])


def is_stale(con: duckdb.DuckDBPyConnection, view_name: str, day: date) -> bool:
    """True when a derived partition is not built or its inputs changed since (ledger version differs).

    Raises:
        ValueError: for a view that is not derived.
    """
    row = con.execute(
        f"SELECT data_version FROM {LEDGER} WHERE asset = ? AND partition_day = ?", [view_name, day]
    ).fetchone()
    return row is None or row[0] != expected_data_version(con, view_name, day)
