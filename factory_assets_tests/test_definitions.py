"""The whole code location loads, and the project's cross-cutting rules hold for every asset."""

from __future__ import annotations

import os
import subprocess
import sys

from dagster import AssetKey, Definitions

from factory_assets.platform.partitions import WAREHOUSE_POOL
from factory_assets.definitions import DATAOPS_ASSETS, MLOPS_ASSETS, defs
from factory_assets_tests.helpers import REPO_ROOT

EXPECTED = {
    "raw_events", "user_item_daily", "item_daily", "user_features", "item_features", "online_features",
    "training_window", "candidate_model", "served_model", "shadow_evaluation", "behaviour_drift", "adaptation_demo",
    "intraday_features", "live_state",
}


def test_defs_is_a_plain_definitions_with_every_asset_and_job():
    assert isinstance(defs, Definitions)
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == EXPECTED
    assert {j.name for j in defs.jobs} >= {"daily_ingest", "daily_training", "apply_retention", "erase_user", "rollback_champion"}
    # a resource per concern, no catch-all
    assert set(defs.resources) == {"warehouse", "event_source", "feature_store", "registry", "artefacts", "model_policy",
                                   "alert_webhook"}


def test_every_asset_that_opens_the_warehouse_takes_the_pool_and_the_served_model_does_not():
    for assets_def in [*DATAOPS_ASSETS, *MLOPS_ASSETS]:
        expected = None if assets_def.key.to_user_string() == "served_model" else WAREHOUSE_POOL
        assert assets_def.op.pool == expected, assets_def.keys


def test_every_check_gates_promotion():
    checks = {(c.asset_key.to_user_string(), c.name): c for a in [*DATAOPS_ASSETS, *MLOPS_ASSETS] for c in a.check_specs}
    assert set(checks) == {
        ("raw_events", "schema"), ("raw_events", "non_null_ids"), ("raw_events", "ts_in_partition"),
        ("raw_events", "unique_event_id"), ("training_window", "window_complete"),
        ("candidate_model", "beats_baseline"), ("candidate_model", "not_worse_than_champion"),
        ("candidate_model", "safe_to_serve"),
    }
    assert all(c.blocking for c in checks.values())


def test_served_model_is_downstream_of_the_gated_candidate():
    graph = defs.resolve_asset_graph()
    assert AssetKey("candidate_model") in graph.get(AssetKey("served_model")).parent_keys
    assert AssetKey("training_window") in graph.get(AssetKey("candidate_model")).parent_keys


def test_dagster_cli_validates_the_project_from_the_repo_root(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FACTORY_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # the repository root's default target is workspace.yaml: both code locations, not a merged one
    text = out.stdout + out.stderr
    assert "code location dataops" in text and "code location mlops" in text, text[-2000:]
    assert "code location factory_assets" not in text
