"""The intraday path: today's events so far, turned into features by the daily views' own SQL.

Daily partitions stay the system of record.  During the day, :func:`build_intraday` takes what has landed
since midnight UTC (the source's events of ``day`` with ``ts < as_of``; validated like an ingest, rejected rows
counted, nothing stored for them), and replaces the intraday tables of the feature store's contract:

``intraday_events``       the accepted events (``raw_events``' columns, ``partition_day = day``);
``intraday_user_item``    ``user_item_daily``'s rows of those events, by ``store.insert_view_rows``: the very SQL of
``intraday_item``         the daily partitions, so once the day is complete they equal the daily rows
                          (``factory_assets_tests/features/test_intraday.py``);
``intraday_status``       one row: ``day``, ``as_of``, ``n_events``, ``n_rejected``, ``data_version`` (sha256 of the
                          day, the cut-off and the accepted events), and the category drift of today so far
                          against yesterday (``drift.assess`` on ``item_daily``'s distinct users per item, as the
                          daily monitor): ``psi_categories``, ``js_distance_categories``, ``drifted`` (categories
                          only: a morning's item-level counts are too thin for the item metric).

All four are replaced in one transaction: a reader sees the previous state or the new one.  The MLOps half
(``ml.live``) folds these rows into the champion's scores for the service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import duckdb
import pandas as pd

from factory_assets.data import drift
from factory_assets.data.sources.validation import validate_events
from factory_assets.feature_store import storage, store
from factory_assets.feature_store.contract import (
    INTRADAY_EVENTS,
    INTRADAY_ITEM,
    INTRADAY_STATUS,
    INTRADAY_USER_ITEM,
    ITEM_CATEGORIES,
    ITEM_DAILY,
)

CODE_VERSION = "1"


@dataclass(frozen=True)
class IntradayResult:
    """What one refresh wrote: the ``intraday_status`` row's fields."""

    day: date
    as_of: datetime
    n_events: int
    n_rejected: int
    data_version: str
    psi_categories: float | None
    js_distance_categories: float | None
    drifted: bool
    reason: str

    def as_dict(self) -> dict:
        return {"day": self.day.isoformat(), "as_of": self.as_of.isoformat(), "n_events": self.n_events,
                "n_rejected": self.n_rejected, "data_version": self.data_version, "psi_categories": self.psi_categories,
                "js_distance_categories": self.js_distance_categories, "drifted": self.drifted, "reason": self.reason}


def write_item_categories(con: duckdb.DuckDBPyConnection, categories: Mapping[str, str] | None) -> None:
    """Replace ``item_categories`` with the source's catalogue (nothing when the source has no categories)."""
    if not categories:
        return
    frame = pd.DataFrame({"item_id": list(categories), "category": [str(v) for v in categories.values()]})
    con.complete()  # a caller's unread execute() result (e.g. a fetchone()) makes DuckDB refuse register()
    con.register("_item_categories_frame", frame)
    try:
        with storage.transaction(con):
            storage.replace_table(con, ITEM_CATEGORIES, "SELECT CAST(item_id AS VARCHAR) AS item_id, "
                                  "CAST(category AS VARCHAR) AS category FROM _item_categories_frame ORDER BY item_id")
    finally:
        con.unregister("_item_categories_frame")


def build_intraday(con: duckdb.DuckDBPyConnection, day: date, as_of: datetime, events: pd.DataFrame,
                   categories: Mapping[str, str] | None, source_rejected: int = 0) -> IntradayResult:
    """Replace the intraday tables with the features of ``events`` of ``day`` before ``as_of``.

    Args:
        con: a writer connection of the warehouse.
        day: the UTC day in progress.
        as_of: the cut-off (tz-aware; naive means UTC); events at or after it are left for the next refresh.
        events: the source's rows of ``day`` (the raw event schema; validated here like an ingest).
        categories: item id -> category (``item_categories`` is refreshed from it), None when unknown.
        source_rejected: rows the source itself quarantined for the day so far (``DayBatch.quarantined`` and
            ``undated``), added to ``n_rejected``.

    Raises:
        ValueError: ``as_of`` outside ``(day 00:00, day + 1 00:00]`` UTC, or a required column missing.
    """
    as_of = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=timezone.utc)
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    if not start < as_of <= start + timedelta(days=1):
        raise ValueError(f"as_of {as_of.isoformat()} is not inside the UTC day {day.isoformat()}")
    accepted, rejected = validate_events(events, day)
    accepted = accepted[accepted["ts"] < pd.Timestamp(as_of)].reset_index(drop=True)
    digest = hashlib.sha256(f"intraday|{CODE_VERSION}|{day}|{as_of.isoformat()}|".encode())
    digest.update(pd.util.hash_pandas_object(accepted, index=False).to_numpy().tobytes())
    write_item_categories(con, categories)
    current, reference = _distinct_users(accepted), _yesterday(con, day)
    report = drift.assess(current, reference, categories) if categories else None
    cats = None if report is None else next((d for d in report.distributions if d.name == "categories"), None)
    result = IntradayResult(
        day=day, as_of=as_of, n_events=len(accepted), n_rejected=len(rejected) + int(source_rejected), data_version=digest.hexdigest(),
        psi_categories=None if cats is None else round(cats.psi, 6),
        js_distance_categories=None if cats is None else round(cats.js_distance, 6),
        drifted=bool(cats is not None and cats.drifted),
        reason=_categories_reason(report, cats))
    frame = accepted.assign(partition_day=day)[["partition_day", *accepted.columns]]
    con.complete()  # (see write_item_categories)
    con.register("_intraday_frame", frame)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _intraday_events_source AS {_EVENTS_SELECT}")
    con.register("_intraday_status_frame", pd.DataFrame([{
        "day": day, "as_of": as_of, "n_events": result.n_events, "n_rejected": result.n_rejected,
        "data_version": result.data_version, "psi_categories": result.psi_categories,
        "js_distance_categories": result.js_distance_categories, "drifted": result.drifted}]))
    try:
        with storage.transaction(con):
            storage.replace_table(con, INTRADAY_EVENTS, _EVENTS_SELECT)
            for table, view in ((INTRADAY_USER_ITEM, store.USER_ITEM_DAILY), (INTRADAY_ITEM, store.ITEM_DAILY)):
                # the daily views' SQL over the staged events (the view's own column types, whatever it ran on)
                storage.replace_table(con, table, *store.view_rows_sql(view, "_intraday_events_source", day, as_of))
            storage.replace_table(con, INTRADAY_STATUS, _STATUS_SELECT)
    finally:
        con.execute("DROP VIEW IF EXISTS _intraday_events_source")
        con.unregister("_intraday_frame")
        con.unregister("_intraday_status_frame")
    return result


_EVENTS_SELECT = ("SELECT CAST(partition_day AS DATE) AS partition_day, CAST(event_id AS VARCHAR) AS event_id, "
                  "CAST(user_id AS VARCHAR) AS user_id, CAST(item_id AS VARCHAR) AS item_id, "
                  "CAST(event_type AS VARCHAR) AS event_type, CAST(ts AS TIMESTAMPTZ) AS ts, "
                  "CAST(quantity AS BIGINT) AS quantity, CAST(value AS DOUBLE) AS value FROM _intraday_frame")
_STATUS_SELECT = ("SELECT CAST(day AS DATE) AS day, CAST(as_of AS TIMESTAMPTZ) AS as_of, CAST(n_events AS BIGINT) AS n_events, "
                  "CAST(n_rejected AS BIGINT) AS n_rejected, CAST(data_version AS VARCHAR) AS data_version, "
                  "CAST(psi_categories AS DOUBLE) AS psi_categories, "
                  "CAST(js_distance_categories AS DOUBLE) AS js_distance_categories, CAST(drifted AS BOOLEAN) AS drifted "
                  "FROM _intraday_status_frame")


def _categories_reason(report: drift.DriftReport | None, cats: drift.DistributionDrift | None) -> str:
    """Why ``drifted`` is what it is, in the terms of the verdict: the categories only (the report's own reason
    also names the item metrics, which a morning's thin counts push over their thresholds on a normal day)."""
    if report is None:
        return "no item categories from this source"
    if cats is None:  # no verdict at all: no reference yet, or too few observations
        return report.reason
    above = [f"categories {name} {value:.3f} > {limit:g}"
             for name, value, limit in (("psi", cats.psi, drift.PSI_THRESHOLD),
                                        ("js_distance", cats.js_distance, drift.JS_DISTANCE_THRESHOLD)) if value > limit]
    return "; ".join(above) if above else "categories within thresholds"


def _distinct_users(events: pd.DataFrame) -> dict[str, float]:
    """item id -> distinct users with any event (the drift monitor's count)."""
    if events.empty:
        return {}
    counts = events.groupby("item_id")["user_id"].nunique()
    return {str(k): float(v) for k, v in counts.items()}


def _yesterday(con: duckdb.DuckDBPyConnection, day: date) -> dict[str, float]:
    """item id -> ``item_daily.n_users`` of the day before ``day`` (empty when it is not materialised)."""
    rows = con.execute(f"SELECT item_id, n_users FROM {ITEM_DAILY} WHERE day = ?", [day - timedelta(days=1)]).fetchall()
    return {str(item): float(n) for item, n in rows}
