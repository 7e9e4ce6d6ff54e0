"""``adaptation_demo``: the adaptation experiment's results (``factory demo``) in the Dagster asset catalogue.

The experiment runs outside any single Dagster run (it drives a whole factory per shift strength, see
:mod:`factory_assets.demo`), so the asset is an *external* asset (an ``AssetSpec``: Dagster never executes
it and automation leaves it alone); ``factory demo`` reports each result as a runless materialization with
the plot, the daily table and the headline figures as metadata.
"""

from __future__ import annotations

import base64
from pathlib import Path

from dagster import AssetMaterialization, AssetSpec, DagsterInstance, MetadataValue

ADAPTATION_DEMO = "adaptation_demo"

adaptation_demo = AssetSpec(
    ADAPTATION_DEMO,
    group_name="monitoring",
    kinds={"python"},
    description=(
        "Factory vs static model vs the simulator's oracle under a preference shift (hit-rate@10 and NDCG@10 a day); "
        "reported by `factory demo`."
    ),
)


def _cell(row: dict, who: str) -> str:
    value = row.get(who)
    return "" if value is None or value["hit_rate_at_10"] is None else f"{value['hit_rate_at_10']:.3f}"


def _daily_table(days: list[dict]) -> str:
    lines = ["| date | factory | factory_live | static | oracle | factory v | promoted | drifted | drifted at 12:00 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in days:
        drifted = bool(row["drift"] and row["drift"]["drifted"])
        live = bool((row.get("factory_live") or {}).get("drifted"))
        lines.append(
            f"| {row['date']} | {_cell(row, 'factory')} | {_cell(row, 'factory_live')} | {_cell(row, 'static')} "
            f"| {_cell(row, 'oracle')} | v{row['factory']['model_version']} | {'yes' if row['promoted'] else ''} "
            f"| {'yes' if drifted else ''} | {'yes' if live else ''} |"
        )
    return "\n".join(lines)


def materialization(result: dict) -> AssetMaterialization:
    """The runless materialization of one strength's result (``factory_assets.demo.run_strength``'s document).

    The partition-free asset keeps one materialization per report; the strength is in the metadata and in
    the ``factory/shift_strength`` tag, so the UI's history lists every strength run.
    """
    summary = result["summary"]
    png = Path(result["outputs"]["png"]).read_bytes()
    image = base64.b64encode(png).decode("ascii")
    if result.get("source", "simulator") == "simulator":
        headline = (
            f"**Shift {result['shift_date']}, strength {result['shift_strength']:g}** — share of the oracle's hit-rate@10: "
            f"factory_live (12:00 UTC) on the shift day **{summary['factory_live_vs_oracle_shift_day']}** (target 0.70); "
            f"factory on {summary['first_day_after_shift']} **{summary['factory_vs_oracle_first_day_after']}** (target 0.72); "
            f"back within 0.02 of the week before ({summary['factory_vs_oracle_week_before']}) on "
            f"**{summary['factory_recovered_on']}**; static after the shift at most **{summary['static_vs_oracle_max_after']}**."
        )
    else:
        headline = (
            f"**{result['source']}, static model frozen on {result['frozen_on']}** — mean hit-rate@10 after it: factory "
            f"**{summary['factory_hit_rate_mean_after']}**, factory_live **{summary['factory_live_hit_rate_mean_after']}**, "
            f"static **{summary['static_hit_rate_mean_after']}** (no oracle on a real log)."
        )
    return AssetMaterialization(
        asset_key=ADAPTATION_DEMO,
        description=f"factory demo, shift strength {result['shift_strength']:g}",
        tags={"factory/shift_strength": f"{result['shift_strength']:g}"},
        metadata={
            "shift_date": result["shift_date"],
            "shift_strength": float(result["shift_strength"]),
            "model_kind": result["model_kind"],
            "factory_vs_oracle_first_day_after": _num(summary["factory_vs_oracle_first_day_after"]),
            "static_vs_oracle_max_after": _num(summary["static_vs_oracle_max_after"]),
            "factory_vs_oracle_mean_before_shift": _num(summary["factory_vs_oracle_mean_before_shift"]),
            "factory_vs_oracle_mean_after": _num(summary["factory_vs_oracle_mean_after"]),
            "factory_live_vs_oracle_shift_day": _num(summary.get("factory_live_vs_oracle_shift_day")),
            "factory_recovered_on": summary.get("factory_recovered_on") or "",
            "source": result.get("source", "simulator"),
            "promotions": len(summary["promotions"]),
            "plot": MetadataValue.md(f"{headline}\n\n![hit-rate@10 over days](data:image/png;base64,{image})"),
            "daily": MetadataValue.md(_daily_table(result["days"])),
            "summary": MetadataValue.json(summary),
            "plot_path": MetadataValue.path(result["outputs"]["png"]),
            "table_csv": MetadataValue.path(result["outputs"]["csv"]),
            "table_json": MetadataValue.path(result["outputs"]["json"]),
            "elapsed_s": float(result["elapsed_s"]),
        },
    )


def _num(value: float | None) -> MetadataValue:
    return MetadataValue.null() if value is None else MetadataValue.float(float(value))


def report(instance: DagsterInstance, result: dict) -> None:
    """Record ``result`` on ``instance`` as a materialization of ``adaptation_demo``."""
    instance.report_runless_asset_event(materialization(result))
