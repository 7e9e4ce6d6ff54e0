"""Retention, erasure (one user followed through) and crash safety of partition writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta

import duckdb
import pytest

from factory_assets.data.defs.maintenance_jobs import apply_retention, erase_user
from factory_assets.ml.defs.jobs import mark_models_trained_on_erased_data
from factory_assets.ml.recsys.artefact import load_manifest_model, read_manifest
from factory_assets.ml import registry
from factory_assets_tests.helpers import FIRST_DAY, small_factory, train
from factory_assets_tests.assets.test_graph import TRAIN_DAY, _check, _con


def test_retention_drops_old_days_records_it_and_blocks_windows_reaching_back(home_copy):
    factory = small_factory(home_copy)
    with _con(home_copy) as con:
        rows_before = dict(con.execute("SELECT partition_day, count(*) FROM raw_events GROUP BY 1").fetchall())
    today = FIRST_DAY + timedelta(days=36)
    result = apply_retention.execute_in_process(
        run_config={"ops": {"retention_op": {"config": {"retention_days": 30, "today": today.isoformat()}}}},
        resources=factory.resources(),
    )
    assert result.success
    cutoff = today - timedelta(days=30)  # FIRST_DAY + 6: days FIRST_DAY .. FIRST_DAY+5 go
    dropped = [d for d in rows_before if d < cutoff]
    summary = result.output_for_node("retention_op")
    assert summary["days_dropped"] == 6 == len(dropped)
    assert summary["rows_dropped"] == sum(rows_before[d] for d in dropped)
    with _con(home_copy) as con:
        assert con.execute("SELECT count(*) FROM raw_events WHERE partition_day < ?", [cutoff]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM user_item_daily WHERE day < ?", [cutoff]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM partition_ledger WHERE partition_day < ?", [cutoff]).fetchone()[0] == 0
        assert con.execute("SELECT days_dropped, cutoff FROM retention_log").fetchall() == [(6, cutoff)]
        kept = con.execute("SELECT count(DISTINCT partition_day) FROM raw_events").fetchone()[0]
    assert kept == 30
    blocked = train(factory, TRAIN_DAY)  # its window starts on FIRST_DAY, now deleted
    assert not _check(blocked, "window_complete").passed


def test_erased_user_leaves_every_table_and_the_next_served_model(home_copy):
    factory = small_factory(home_copy)
    assert train(factory, TRAIN_DAY).success
    with _con(home_copy) as con:
        user, n_events = con.execute(
            "SELECT user_id, count(*) FROM raw_events GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
        ).fetchone()
        days_with_user = {r[0] for r in con.execute("SELECT DISTINCT partition_day FROM raw_events WHERE user_id = ?", [user]).fetchall()}
        versions_before = dict(con.execute(
            "SELECT asset || '/' || partition_day, data_version FROM partition_ledger").fetchall())
    champion = registry.read_alias(home_copy / "simulator" / "aliases")
    assert user in load_manifest_model(champion["path"], "served", champion["sha256"]).user_ids

    result = erase_user.execute_in_process(
        run_config={"ops": {"erasure_op": {"config": {"user_id": user}}}}, resources=factory.resources()
    )
    assert result.success
    summary = result.output_for_node("erasure_op")
    assert summary["rows_deleted"] == n_events
    assert set(summary["days"]) == {d.isoformat() for d in days_with_user}
    # the MLOps half's side (what the erasure_watch sensor requests after erase_user): v1, the only version,
    # was trained on a window that held the user's events; run twice, it marks nothing new
    marking = mark_models_trained_on_erased_data.execute_in_process(resources=factory.resources())
    assert marking.output_for_node("mark_erased_models_op") == [1]
    again = mark_models_trained_on_erased_data.execute_in_process(resources=factory.resources())
    assert again.output_for_node("mark_erased_models_op") == []
    with _con(home_copy) as con:
        for table in ("raw_events", "user_item_daily", "raw_events_quarantine"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE user_id = ?", [user]).fetchone()[0] == 0, table
        after = dict(con.execute("SELECT asset || '/' || partition_day, data_version FROM partition_ledger").fetchall())
        assert con.execute("SELECT user_sha256 FROM erasure_log").fetchall()[0][0] != user  # the id is not kept
    for day in days_with_user:
        for asset in ("raw_events", "user_item_daily", "item_daily"):
            assert after[f"{asset}/{day}"] != versions_before[f"{asset}/{day}"], (asset, day)
    with factory.registry() as reg:
        stale_events = registry.history(reg).query("action == 'trained_on_erased_data'")["version"].tolist()
    assert stale_events == [1]
    materialized = {(e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()}
    assert ("raw_events", min(days_with_user).isoformat()) in materialized

    retrained = train(factory, TRAIN_DAY + timedelta(days=1))
    assert retrained.success
    pointer = registry.read_alias(home_copy / "simulator" / "aliases")
    assert pointer["version"] == 2
    assert user not in load_manifest_model(pointer["path"], "served", pointer["sha256"]).user_ids
    assert user not in load_manifest_model(pointer["path"], "eval", pointer["sha256"]).user_ids
    assert read_manifest(pointer["path"])["window"]["inputs"]  # names the post-erasure versions
    with _con(home_copy) as con:
        from factory_assets.feature_store.contract import stale_inputs

        assert stale_inputs(con, read_manifest(pointer["path"])) == []
        assert stale_inputs(con, read_manifest(champion["path"]))  # the old champion was trained on erased data


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys, duckdb
    import pandas as pd
    from datetime import date
    from factory_assets.data import warehouse
    from factory_assets.data.sources.schema import empty_quarantine
    from factory_assets.data.sources.simulator import ShopSimulator

    path, day, seed = sys.argv[1], date.fromisoformat(sys.argv[2]), int(sys.argv[3])
    con = duckdb.connect(path)
    con.execute("SET TimeZone = 'UTC'")
    warehouse.ensure_schema(con)
    events = ShopSimulator(seed=seed, n_users=300, n_items=80, events_per_day=2000).fetch_day(day).events
    if len(sys.argv) > 4:  # die after the DELETE and the INSERT, before COMMIT
        real = warehouse.record_partition
        def die(*args, **kwargs):
            real(*args, **kwargs)
            os._exit(9)
        warehouse.record_partition = die
    print(warehouse.write_raw_partition(con, day, events, empty_quarantine()))
    """
)


@pytest.mark.timeout(120)
def test_a_write_killed_mid_transaction_leaves_the_previous_version(tmp_path):
    path, day = str(tmp_path / "w.duckdb"), "2024-10-03"

    def write(seed: int, crash: bool = False) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", CRASH_SCRIPT, path, day, str(seed)] + (["crash"] if crash else [])
        return subprocess.run(argv, capture_output=True, text=True, timeout=100)

    first = write(seed=1)
    assert first.returncode == 0, first.stderr
    v1 = first.stdout.strip()

    def state():
        with duckdb.connect(path) as con:
            return (
                con.execute("SELECT count(*) FROM raw_events").fetchone()[0],
                con.execute("SELECT data_version FROM partition_ledger").fetchall(),
            )

    before = state()
    crashed = write(seed=2, crash=True)  # a different version of the day, killed before COMMIT
    assert crashed.returncode == 9
    assert state() == before == (before[0], [(v1,)])

    rerun = write(seed=2)
    clean_path = str(tmp_path / "clean.duckdb")
    clean = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, clean_path, day, "2"], capture_output=True, text=True, timeout=100)
    assert rerun.returncode == 0 and clean.returncode == 0
    assert rerun.stdout.strip() == clean.stdout.strip() != v1  # same data version as an uninterrupted run
