"""Maintenance jobs of the DataOps half (op jobs, not assets): data retention and the right to erasure.

Both change raw and feature partitions outside their assets' own runs.  Erasure reports the new data versions
as ``AssetMaterialization`` events (the UI then shows the downstream partitions as changed) and records the
request in ``erasure_log``; the MLOps half learns which model versions were trained on the erased data from
the feature store contract (their manifests' input versions against the partition ledger,
:func:`factory_assets.feature_store.contract.stale_inputs`), never from this job.
"""

from datetime import date, datetime, timezone

from dagster import AssetMaterialization, Config, OpExecutionContext, job, op
from pydantic import Field

from factory_assets.data import maintenance
from factory_assets.data.resources import WarehouseResource
from factory_assets.feature_store import contract
from factory_assets.platform.partitions import WAREHOUSE_POOL

RETENTION_JOB = "apply_retention"
ERASURE_JOB = "erase_user"


class RetentionConfig(Config):
    retention_days: int = Field(default=730, description="keep this many days before `today`")
    today: str | None = Field(default=None, description="reference day, ISO (default: today, UTC)")


class ErasureConfig(Config):
    user_id: str = Field(description="the user whose events are erased everywhere")
    reason: str = Field(default="right to erasure request", description="recorded with the request")


@op(pool=WAREHOUSE_POOL, description="Drop raw and feature partitions older than the retention period (recorded).")
def retention_op(context: OpExecutionContext, config: RetentionConfig, warehouse: WarehouseResource) -> dict:
    today = date.fromisoformat(config.today) if config.today else datetime.now(timezone.utc).date()
    with warehouse.connect() as con:
        summary = maintenance.apply_retention(con, today, config.retention_days)
    context.log.info(f"retention: {summary}")
    return summary


@op(pool=WAREHOUSE_POOL, description="Erase one user's events from every partition and feature view.")
def erasure_op(context: OpExecutionContext, config: ErasureConfig, warehouse: WarehouseResource) -> dict:
    with warehouse.connect() as con:
        summary = maintenance.erase_user(con, config.user_id, config.reason)
        versions = {
            view: dict(zip(frame["partition_day"].astype(str), frame["data_version"]))
            for view in (contract.RAW_EVENTS, *maintenance.FEATURE_TABLES)
            for frame in [contract.ledger(con, view, date.min, date.max)]
        }
    for day in summary["days"]:
        for view, by_day in versions.items():
            if day in by_day:
                context.log_event(AssetMaterialization(
                    asset_key=view, partition=day, tags={"dagster/data_version": by_day[day]},
                    metadata={"reason": f"erasure of user sha256 {summary['user_sha256'][:12]}…"},
                ))
    context.log.info(f"erasure: {len(summary['days'])} days, {summary['rows_deleted']} rows")
    return summary


@job(name=RETENTION_JOB, description="Apply the data retention period to raw data and feature views.")
def apply_retention():
    retention_op()


@job(name=ERASURE_JOB, description="Right to erasure: delete one user's events everywhere (models trained on "
     "them become stale through their manifests' input versions).")
def erase_user():
    erasure_op()
