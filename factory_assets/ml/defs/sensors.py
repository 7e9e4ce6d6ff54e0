"""Sensors of the MLOps location (RUNNING by default): the only ways the champion changes outside a training run.

``champion_guard``   every tick re-verifies the live champion (files only: :func:`verify_champion`); when it
                     fails, requests a ``rollback_champion`` run (``served_model`` with ``action=rollback``,
                     actor ``auto-rollback``) to the previous eligible champion that verifies, on that
                     version's partition day.  One request per failing alias (run key: the alias's sha256 of
                     its content), so a slow run is never requested twice.
``shadow_promoter``  reads the latest ``shadow_evaluation`` materialization; when it requested a promotion
                     and the aliases still name the same shadow and champion, requests a ``served_model`` run
                     with ``action=shadow_promotion`` on the shadow's partition day.
``erasure_watch``    after every successful ``erase_user`` run (the DataOps location's job: any code location
                     is watched), requests ``mark_models_trained_on_erased_data`` (one run per erasure run).
"""


import hashlib
import json

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunStatusSensorContext,
    run_status_sensor,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from factory_assets.ml import registry as model_registry
from factory_assets.ml.defs.champion_checks import (
    AUTO_ROLLBACK_ACTOR,
    auto_rollback_reason,
    choose_auto_rollback,
    verify_champion,
)
from factory_assets.ml.defs.jobs import mark_models_trained_on_erased_data, rollback_champion
from factory_assets.ml.defs.served import ROLLBACK, SHADOW_PROMOTION, served_model, served_model_run_config
from factory_assets.ml.defs.shadow import SHADOW_EVALUATION
from factory_assets.ml.resources import ArtefactStore, RegistryResource

CHAMPION_GUARD = "champion_guard"
SHADOW_PROMOTER = "shadow_promoter"
ERASURE_WATCH = "erasure_watch"
ERASURE_JOB = "erase_user"  # the DataOps location's job (named, not imported: the halves share no code)
GUARD_INTERVAL_S = 60
SHADOW_PROMOTER_INTERVAL_S = 60
SHADOW_PROMOTER_ACTOR = "shadow_evaluation"


def _alias_fingerprint(path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"


def rollback_run_config(target: int, failure: str, actor: str = AUTO_ROLLBACK_ACTOR) -> dict:
    """Run config of ``rollback_champion`` for an automatic rollback to ``target``."""
    return served_model_run_config(ROLLBACK, target, auto_rollback_reason(failure), actor)


@sensor(
    name=CHAMPION_GUARD,
    target=rollback_champion,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=GUARD_INTERVAL_S,
    description="Re-verifies the live champion; when it fails, requests a served_model rollback run (actor "
    "auto-rollback) to the previous eligible champion.",
)
def champion_guard(context: SensorEvaluationContext, artefacts: ArtefactStore, registry: RegistryResource):
    layout = artefacts.layout
    if not layout.aliases.exists():
        return SkipReason("no champion yet: nothing to verify")
    ok, reason = verify_champion(layout)
    if ok:
        return SkipReason(reason)
    context.log.error(f"champion verification failed: {reason}")
    with registry.connect() as con:
        try:
            choice = choose_auto_rollback(con, layout)
        except LookupError as exc:
            return SkipReason(f"{reason}; no automatic rollback: {exc}")
        day = model_registry.version_row(con, choice["rolled_back_to"])["partition_day"]
    key = f"auto-rollback-v{choice['rolled_back_from']}-{_alias_fingerprint(model_registry.alias_path(layout.aliases))}"
    return RunRequest(
        run_key=key,
        partition_key=day,
        run_config=rollback_run_config(choice["rolled_back_to"], reason),
        tags={"factory/action": "rollback", "factory/actor": AUTO_ROLLBACK_ACTOR,
              "factory/rolled_back_from": str(choice["rolled_back_from"])},
    )


@sensor(
    name=SHADOW_PROMOTER,
    target=[served_model],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SHADOW_PROMOTER_INTERVAL_S,
    description="Launches the served_model run (action=shadow_promotion) that shadow_evaluation requested.",
)
def shadow_promoter(context: SensorEvaluationContext, artefacts: ArtefactStore, registry: RegistryResource):
    records = context.instance.fetch_materializations(AssetKey(SHADOW_EVALUATION), limit=1, ascending=False).records
    if not records or records[0].event_log_entry.asset_materialization is None:
        return SkipReason("shadow_evaluation was never materialised")
    record = records[0]
    if context.cursor and int(context.cursor) >= record.storage_id:
        return SkipReason("no new shadow_evaluation materialization")
    context.update_cursor(str(record.storage_id))
    event = record.event_log_entry
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    if not meta.get("promotion_requested"):
        return SkipReason(f"shadow_evaluation {event.asset_materialization.partition}: {meta.get('verdict', 'no request')}")
    version, champion = meta.get("promote_version"), meta.get("promote_from_version")
    shadow = model_registry.read_alias(artefacts.aliases, model_registry.SHADOW)
    current = model_registry.read_alias(artefacts.aliases)
    if shadow is None or shadow["version"] != version or current is None or current["version"] != champion:
        return SkipReason(f"the aliases moved since shadow_evaluation asked to promote v{version}: nothing to do")
    with registry.connect() as con:
        day = model_registry.version_row(con, int(version))["partition_day"]
    evidence = meta.get("promotion_evidence") or {}
    return RunRequest(
        run_key=f"shadow-promotion-v{version}-{record.storage_id}",
        partition_key=day,
        run_config=served_model_run_config(SHADOW_PROMOTION, int(version), meta.get("promotion_reason", ""),
                                           SHADOW_PROMOTER_ACTOR, json.loads(json.dumps(evidence))),
        tags={"factory/action": SHADOW_PROMOTION, "factory/actor": SHADOW_PROMOTER_ACTOR},
    )


@run_status_sensor(
    name=ERASURE_WATCH,
    run_status=DagsterRunStatus.SUCCESS,
    monitor_all_code_locations=True,
    request_job=mark_models_trained_on_erased_data,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=GUARD_INTERVAL_S,
    description="After each successful erase_user run (DataOps), marks the model versions trained on the erased "
    "data (mark_models_trained_on_erased_data).",
)
def erasure_watch(context: RunStatusSensorContext):
    if context.dagster_run.job_name != ERASURE_JOB:
        return SkipReason(f"{context.dagster_run.job_name} is not {ERASURE_JOB}")
    return RunRequest(run_key=f"erasure:{context.dagster_run.run_id}")
