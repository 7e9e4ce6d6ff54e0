"""The MLOps facts kept beside the versions in the registry's store: window manifests and shadow scores."""

from __future__ import annotations

import math
from datetime import date, datetime, timezone

import duckdb
import numpy as np
import pytest
import sqlalchemy as sa
from dagster_duckdb import DuckDBResource

from factory_assets.feature_store.resource import FeatureStoreResource
from factory_assets.ml import registry

DAY1, DAY2 = date(2024, 10, 1), date(2024, 10, 2)
NOW = datetime(2024, 10, 3, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def con(tmp_path):
    with registry.connect(registry.default_url(tmp_path)) as connection:
        yield connection


def _manifest(end: date, complete: bool, version: str) -> dict:
    return {"start": "2024-09-04", "end": end.isoformat(), "days": 28, "complete": complete,
            "missing": {"user_item_daily": [], "item_daily": [] if complete else ["2024-09-05"]},
            "inputs": [{"asset": "user_item_daily", "partition": "2024-09-04", "data_version": "a", "row_count": 3}],
            "window_version": version}


def test_window_manifests_round_trip_and_are_replaced(con):
    assert registry.load_window_manifest(con, DAY2) is None
    first = _manifest(DAY2, False, "v1")
    registry.save_window_manifest(con, DAY2, first)
    assert registry.load_window_manifest(con, DAY2) == first
    assert registry.load_window_manifest(con, DAY1) is None
    again = _manifest(DAY2, True, "v2")
    registry.save_window_manifest(con, DAY2, again)  # a re-run replaces the day's manifest
    assert registry.load_window_manifest(con, DAY2) == again
    t = registry.training_windows_table.c
    rows = con.execute(sa.select(t.partition_day, t.window_start, t.window_end, t.complete, t.window_version)).fetchall()
    assert rows == [(DAY2, date(2024, 9, 4), DAY2, True, "v2")]
    # days are stored like model_versions.partition_day (ISO text in SQLite)
    assert con.exec_driver_sql("SELECT partition_day FROM training_windows").scalar_one() == "2024-10-02"


def _row(day, champion, shadow, n, champion_ndcg=None, shadow_ndcg=None, note="x"):
    lift = None if champion_ndcg is None else shadow_ndcg - champion_ndcg
    return {"day": day, "champion_version": champion, "shadow_version": shadow, "n_requests": n, "n_excluded": 0,
            "n_converting": n // 2, "champion_hit_rate_at_10": champion_ndcg, "shadow_hit_rate_at_10": shadow_ndcg,
            "champion_ndcg_at_10": champion_ndcg, "shadow_ndcg_at_10": shadow_ndcg, "ndcg_lift": lift,
            "ndcg_lift_se": float("nan") if lift is not None else None, "note": note, "scored_at": NOW}


def test_shadow_scores_replace_a_day_and_read_back_in_order(con):
    assert registry.shadow_scores(con).empty
    registry.replace_shadow_scores(con, DAY1, [_row(DAY1, 1, None, 0, note="no pair")])
    # numpy scalars (what the scoring code yields) bind as plain values
    registry.replace_shadow_scores(con, DAY2, [
        _row(DAY2, np.int64(1), np.int64(3), np.int64(10), np.float64(0.2), np.float64(0.3)),
        _row(DAY2, 1, 2, 5, 0.2, 0.1),
    ])
    table = registry.shadow_scores(con)
    assert list(table.columns) == list(registry.SCORE_COLUMNS)
    assert list(table["day"]) == [DAY1, DAY2, DAY2]
    assert list(table["shadow_version"].iloc[1:]) == [2, 3] and math.isnan(table["shadow_version"].iloc[0])
    assert math.isnan(table["ndcg_lift_se"].iloc[2])  # NaN is stored as NULL and read back as NaN
    assert table["shadow_ndcg_at_10"].iloc[2] == pytest.approx(0.3)
    assert table["scored_at"].iloc[0] == NOW
    assert list(registry.shadow_scores(con, until=DAY1)["day"]) == [DAY1]

    registry.replace_shadow_scores(con, DAY2, [_row(DAY2, 1, 3, 12, 0.2, 0.4)])  # a re-run replaces the day
    table = registry.shadow_scores(con)
    assert list(zip(table["day"], table["n_requests"])) == [(DAY1, 0), (DAY2, 12)]


def test_the_feature_store_connection_is_read_only(tmp_path):
    resource = FeatureStoreResource(home=str(tmp_path), source="simulator")
    # a home that never ingested: an empty stand-in, nothing created on disk
    with resource.connect() as fs:
        assert fs.execute("SELECT count(*) FROM partition_ledger").fetchone()[0] == 0
        assert fs.execute("SELECT count(*) FROM user_item_daily").fetchone()[0] == 0
    assert not resource.layout.warehouse.exists()

    with duckdb.connect(str(resource.layout.warehouse)) as writer:
        writer.execute("CREATE TABLE t (a INTEGER)")
    with resource.connect() as fs:
        assert fs.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        with pytest.raises(duckdb.Error, match="read-only"):
            fs.execute("INSERT INTO t VALUES (1)")
    # this process holding the file read-write (as the DataOps resource opens it): the same configuration is
    # used (DuckDB refuses to mix them in one process)
    with DuckDBResource(database=str(resource.layout.warehouse)).get_connection() as writer, resource.connect() as fs:
        writer.execute("INSERT INTO t VALUES (1)")
        assert fs.execute("SELECT count(*) FROM t").fetchone()[0] == 1
