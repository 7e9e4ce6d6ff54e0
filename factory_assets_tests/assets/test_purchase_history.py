"""``candidate_model`` with the long purchase history: what it reads is in the manifest and a retrain repeats it."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest

from factory_assets.feature_store import retrieval, store
from factory_assets.feature_store.contract import stale_inputs
from factory_assets.ml.recsys.artefact import load_manifest_model, read_manifest
from factory_assets.ml import registry
from factory_assets.ml.training import retrain_from_manifest
from factory_assets_tests.helpers import FIRST_DAY, small_factory, train

LAST_DAY = FIRST_DAY + timedelta(days=35)  # the ingested home holds FIRST_DAY .. FIRST_DAY + 35
HISTORY_DAYS = 8


def _con(home):
    con = duckdb.connect(str(home / "simulator" / "warehouse.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    return con


def test_purchase_history_reads_converting_rows_and_names_its_partitions(ingested_home):
    with _con(ingested_home) as con:
        frame, inputs = retrieval.purchase_history(con, LAST_DAY, 10)
        expected = con.execute(
            f"SELECT count(*) FROM {store.USER_ITEM_DAILY} WHERE day BETWEEN ? AND ? AND n_conversions > 0",
            [LAST_DAY - timedelta(days=9), LAST_DAY]).fetchone()[0]
        ledger_rows = con.execute("SELECT count(*) FROM partition_ledger WHERE asset = ? AND partition_day BETWEEN ? AND ?",
                                  [store.USER_ITEM_DAILY, LAST_DAY - timedelta(days=9), LAST_DAY]).fetchone()[0]
    assert len(frame) == expected > 0 and (frame["n_conversions"] > 0).all()
    assert min(frame["day"]) == LAST_DAY - timedelta(days=9) and max(frame["day"]) == LAST_DAY
    assert inputs["start"] == (LAST_DAY - timedelta(days=9)).isoformat() and len(inputs["inputs"]) == ledger_rows == 10
    assert inputs["missing"] == []
    with _con(ingested_home) as con:  # the home starts on FIRST_DAY: the 3 days before it are missing
        _, early = retrieval.purchase_history(con, FIRST_DAY + timedelta(days=1), 5)
    assert early["missing"] == [(FIRST_DAY - timedelta(days=i)).isoformat() for i in (3, 2, 1)]
    assert [i["partition"] for i in early["inputs"]] == [FIRST_DAY.isoformat(), (FIRST_DAY + timedelta(days=1)).isoformat()]
    with _con(ingested_home) as con, pytest.raises(ValueError, match="days >= 1"):
        retrieval.purchase_history(con, LAST_DAY, 0)


@pytest.mark.timeout(240)
def test_candidate_with_history_records_it_and_retrains_bit_for_bit(home_copy):
    result = train(small_factory(home_copy), LAST_DAY, candidate={"history_days": HISTORY_DAYS, "search_budget": 1, "ranker_c": 1.0})
    assert result.success
    with _con(home_copy) as con, registry.connect(registry.default_url(home_copy / "simulator")) as reg:
        row = registry.version_row(reg, 1)
        manifest = read_manifest(row["manifest_path"], row["manifest_sha256"])
        # the window's 28 days plus the 8 before them: every fit reads 8 days before its own as-of day
        assert manifest["params"]["history_days"] == HISTORY_DAYS
        assert manifest["history"]["days"] == HISTORY_DAYS + 27 and len(manifest["history"]["inputs"]) == HISTORY_DAYS + 27
        assert manifest["history"]["start"] == (LAST_DAY - timedelta(days=HISTORY_DAYS + 26)).isoformat()
        assert manifest["history"]["missing"] == []
        assert "repeat_history" in manifest["evaluation"]["references"]
        served = load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
        assert served.ranker.sources.long_days is not None
        assert retrain_from_manifest(con, manifest) == {r: manifest["artefacts"][r]["sha256"] for r in ("eval", "served")}
        # a history partition outside the window that changes makes the manifest stale (the retrain refuses)
        day_before = LAST_DAY - timedelta(days=30)
        con.execute("UPDATE partition_ledger SET data_version = 'changed' WHERE asset = ? AND partition_day = ?",
                    [store.USER_ITEM_DAILY, day_before])
        assert [s["partition"] for s in stale_inputs(con, manifest)] == [day_before.isoformat()]
        with pytest.raises(ValueError, match="inputs changed"):
            retrain_from_manifest(con, manifest)


@pytest.mark.timeout(240)
def test_models_show_and_diff_include_the_purchase_history(home_copy):
    from factory_assets.ml.models_cli import diff_versions, show_version
    from factory_assets.platform.settings import HomeLayout

    fixed = {"search_budget": 1, "ranker_c": 1.0}
    assert train(small_factory(home_copy), LAST_DAY - timedelta(days=1), candidate={**fixed, "history_days": 0}).success
    assert train(small_factory(home_copy), LAST_DAY, candidate={**fixed, "history_days": HISTORY_DAYS}).success
    layout = HomeLayout(home_copy, "simulator")
    shown = show_version(layout, 2)
    history = shown["lineage"]["purchase_history"]
    assert history == {"start": (LAST_DAY - timedelta(days=HISTORY_DAYS + 26)).isoformat(), "end": LAST_DAY.isoformat(),
                       "days": HISTORY_DAYS + 27, "missing": []}
    # window (2 views x 28 days) + the 7 user_item_daily days before it (8 days ending the window's first day)
    assert len(shown["lineage"]["feature_partitions"]) == 2 * 28 + HISTORY_DAYS - 1
    assert show_version(layout, 1)["lineage"]["purchase_history"] is None
    diff = diff_versions(layout, 1, 2)
    assert diff["params"]["history_days"] == {"a": 0, "b": HISTORY_DAYS}  # absent from v1's manifest: its default, 0
    # v1's window ends the day before v2's: 27 shared days of both views, and v1's first user_item_daily day is
    # in v2's history; v1 alone has its first item_daily day, v2 alone its last day (2 views) and 6 history days
    assert diff["inputs"]["same"] == 2 * 27 + 1
    assert len(diff["inputs"]["differ"]) == 1 + 2 + (HISTORY_DAYS - 2)
