"""Blocking data checks on a stored ``raw_events`` partition, each an independent SQL query.

They re-read what was written (not the frame in memory), so a writer bug or a table edited by hand shows up.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
from dagster import AssetCheckResult, AssetCheckSpec

from factory_assets.data.warehouse import RAW_EVENTS

SCHEMA = "schema"
NON_NULL_IDS = "non_null_ids"
TS_IN_PARTITION = "ts_in_partition"
UNIQUE_EVENT_ID = "unique_event_id"

EXPECTED_TYPES: dict[str, str] = {
    "partition_day": "DATE",
    "event_id": "VARCHAR",
    "user_id": "VARCHAR",
    "item_id": "VARCHAR",
    "event_type": "VARCHAR",
    "ts": "TIMESTAMP WITH TIME ZONE",
    "quantity": "BIGINT",
    "value": "DOUBLE",
}

SPECS = [
    AssetCheckSpec(SCHEMA, asset=RAW_EVENTS, blocking=True, description="columns and types of the event schema"),
    AssetCheckSpec(NON_NULL_IDS, asset=RAW_EVENTS, blocking=True, description="no null or empty event/user/item id"),
    AssetCheckSpec(TS_IN_PARTITION, asset=RAW_EVENTS, blocking=True, description="every ts inside the partition's UTC day"),
    AssetCheckSpec(UNIQUE_EVENT_ID, asset=RAW_EVENTS, blocking=True, description="event_id unique within the partition"),
]


def run_checks(con: duckdb.DuckDBPyConnection, day: date) -> list[AssetCheckResult]:
    """Evaluate the four checks on the stored partition ``day``."""
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = current_schema() ORDER BY ordinal_position",
            [RAW_EVENTS],
        ).fetchall()
    )
    wrong = {c: types.get(c) for c, t in EXPECTED_TYPES.items() if types.get(c) != t}
    null_ids = con.execute(
        f"SELECT count(*) FROM {RAW_EVENTS} WHERE partition_day = ? AND ("
        "event_id IS NULL OR trim(event_id) = '' OR user_id IS NULL OR trim(user_id) = '' "
        "OR item_id IS NULL OR trim(item_id) = '')",
        [day],
    ).fetchone()[0]
    start = day.isoformat()
    end = (day + timedelta(days=1)).isoformat()
    outside = con.execute(
        f"SELECT count(*) FROM {RAW_EVENTS} WHERE partition_day = ? AND (ts < ?::TIMESTAMPTZ OR ts >= ?::TIMESTAMPTZ)",
        [day, f"{start} 00:00:00+00", f"{end} 00:00:00+00"],
    ).fetchone()[0]
    duplicates = con.execute(
        f"SELECT count(*) - count(DISTINCT event_id) FROM {RAW_EVENTS} WHERE partition_day = ?", [day]
    ).fetchone()[0]
    return [
        AssetCheckResult(check_name=SCHEMA, asset_key=RAW_EVENTS, passed=not wrong, metadata={"mismatched_columns": str(wrong)}),
        AssetCheckResult(check_name=NON_NULL_IDS, asset_key=RAW_EVENTS, passed=null_ids == 0, metadata={"rows_with_missing_ids": int(null_ids)}),
        AssetCheckResult(check_name=TS_IN_PARTITION, asset_key=RAW_EVENTS, passed=outside == 0, metadata={"rows_outside_day": int(outside)}),
        AssetCheckResult(check_name=UNIQUE_EVENT_ID, asset_key=RAW_EVENTS, passed=duplicates == 0, metadata={"duplicate_event_ids": int(duplicates)}),
    ]
