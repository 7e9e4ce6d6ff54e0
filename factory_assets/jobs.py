"""Maintenance jobs (op jobs, not assets): data retention and the right to erasure.

Both change raw partitions outside ``raw_events``' own runs.  Erasure reports the new data versions as
``AssetMaterialization`` events (the UI then shows the downstream partitions as changed) and records
``trained_on_erased_data`` for every model version whose inputs it changed: the champion gate waives the
comparison with such a champion, so the next passing candidate replaces it.
"""

from datetime import date, datetime, timezone

from dagster import AssetMaterialization, Config, OpExecutionContext, job, op
from pydantic import Field

from factory_assets.data import maintenance
from factory_assets.platform.partitions import WAREHOUSE_POOL
from factory_assets.feature_store import store
from factory_assets.ml.recsys.artefact import read_manifest
from factory_assets.ml import registry
from factory_assets.resources import FactoryResource
from factory_assets.data.warehouse import RAW_EVENTS

RETENTION_JOB = "apply_retention"
ERASURE_JOB = "erase_user"


class RetentionConfig(Config):
    retention_days: int = Field(default=730, description="keep this many days before `today`")
    today: str | None = Field(default=None, description="reference day, ISO (default: today, UTC)")


class ErasureConfig(Config):
    user_id: str = Field(description="the user whose events are erased everywhere")
    reason: str = Field(default="right to erasure request", description="recorded with the request")


@op(pool=WAREHOUSE_POOL, description="Drop raw and feature partitions older than the retention period (recorded).")
def retention_op(context: OpExecutionContext, config: RetentionConfig, factory: FactoryResource) -> dict:
    today = date.fromisoformat(config.today) if config.today else datetime.now(timezone.utc).date()
    with factory.warehouse() as con:
        summary = maintenance.apply_retention(con, today, config.retention_days)
    context.log.info(f"retention: {summary}")
    return summary


@op(pool=WAREHOUSE_POOL, description="Erase one user's events from every partition and feature view.")
def erasure_op(context: OpExecutionContext, config: ErasureConfig, factory: FactoryResource) -> dict:
    with factory.warehouse() as con:
        summary = maintenance.erase_user(con, config.user_id, config.reason)
        stale = []
        for row in registry.versions(con).itertuples(index=False):
            manifest = read_manifest(registry.version_row(con, int(row.version))["manifest_path"])
            if maintenance.stale_inputs(con, manifest):
                stale.append(int(row.version))
                registry.record_event(
                    con, int(row.version), registry.ERASED_DATA, f"inputs changed by erasure {summary['user_sha256'][:12]}"
                )
        versions = {
            view: dict(zip(frame["partition_day"].astype(str), frame["data_version"]))
            for view in (RAW_EVENTS, *maintenance.FEATURE_TABLES)
            for frame in [store.ledger(con, view, date.min, date.max)]
        }
    for day in summary["days"]:
        for view, by_day in versions.items():
            if day in by_day:
                context.log_event(AssetMaterialization(
                    asset_key=view, partition=day, tags={"dagster/data_version": by_day[day]},
                    metadata={"reason": f"erasure of user sha256 {summary['user_sha256'][:12]}…"},
                ))
    summary["stale_model_versions"] = stale
    context.log.info(f"erasure: {len(summary['days'])} days, {summary['rows_deleted']} rows; stale models {stale}")
    return summary


@job(name=RETENTION_JOB, description="Apply the data retention period to raw data and feature views.")
def apply_retention():
    retention_op()


@job(name=ERASURE_JOB, description="Right to erasure: delete one user's events everywhere; affected models become stale.")
def erase_user():
    erasure_op()


# --------------------------------------------------------------------------- rollback
ROLLBACK_JOB = "rollback_champion"


class RollbackConfig(Config):
    to_version: int | None = Field(
        default=None, description="version to restore; default: the previous eligible champion (no ping-pong)"
    )
    reason: str = Field(description="why the champion is rolled back (recorded in model_events and the alias)")
    actor: str = Field(default="dagster", description="who asked for it (recorded)")


@op(pool=WAREHOUSE_POOL, description="Restore the previous champion (or to_version) after verifying its artefacts.")
def rollback_op(context: OpExecutionContext, config: RollbackConfig, factory: FactoryResource) -> dict:
    from dagster import Failure

    from factory_assets.ml.recsys.artefact import ArtefactIntegrityError

    layout = factory.layout.ensure()
    with factory.warehouse() as con:
        try:
            pointer = registry.rollback(con, layout.aliases, config.reason, config.actor, config.to_version)
        except (LookupError, ValueError, ArtefactIntegrityError, FileNotFoundError) as exc:
            raise Failure(description=f"rollback refused: {exc}", allow_retries=False) from exc
    summary = {"from_version": pointer["previous_version"], "to_version": pointer["version"], "sha256": pointer["sha256"],
               "actor": config.actor, "reason": pointer["reason"]}
    context.log.info(f"rollback: v{summary['from_version']} -> v{summary['to_version']} by {config.actor}")
    context.log_event(AssetMaterialization(  # the alias moved: served_model of the restored version's day
        asset_key="served_model", partition=pointer["partition_day"], tags={"dagster/data_version": pointer["sha256"]},
        description=f"rolled back to v{pointer['version']}",
        metadata={"version": pointer["version"], "previous_version": pointer["previous_version"], "reason": pointer["reason"]},
    ))
    return summary


@job(name=ROLLBACK_JOB, description="Roll the served champion back to the previous eligible champion (or a given version).")
def rollback_champion():
    rollback_op()
