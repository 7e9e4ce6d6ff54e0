"""Jobs of the MLOps location: ``daily_training`` and ``rollback_champion`` (both asset jobs).

``rollback_champion`` materialises ``served_model`` with ``action=rollback`` (forced for this job, whatever
``action`` says).  Its run config has the meaning of the former op job's, under ``served_model``'s config:
``{"ops": {"served_model": {"config": {"reason": str (required), "version": int | None (the former
to_version; None = the previous eligible champion), "actor": str}}}}``.  The partition must be the restored
version's day (``factory models rollback`` and the ``champion_guard`` sensor pick it; a run launched on another
partition fails and names the right one).  (Dagster allows no config mapping on a partitioned job, hence the
asset's own config.)
"""


from dagster import AssetSelection, OpExecutionContext, define_asset_job, job, op

from factory_assets.feature_store.resource import FeatureStoreResource
from factory_assets.ml.erasure import mark_trained_on_erased_data
from factory_assets.ml.resources import RegistryResource

from factory_assets.ml.defs.candidate import candidate_model, training_window
from factory_assets.ml.defs.served import ROLLBACK, served_model, served_model_run_config
from factory_assets.ml.defs.shadow import shadow_evaluation

TRAINING_JOB = "daily_training"
ROLLBACK_JOB = "rollback_champion"
ERASURE_MARK_JOB = "mark_models_trained_on_erased_data"


daily_training = define_asset_job(
    TRAINING_JOB,
    selection=AssetSelection.assets(training_window, candidate_model, served_model, shadow_evaluation),
    description="The day's training window, candidate (with its blocking gates) and, if they pass, promotion; "
    "then the day's shadow evaluation.",
)

rollback_champion = define_asset_job(
    ROLLBACK_JOB,
    selection=AssetSelection.assets(served_model),
    config=served_model_run_config(ROLLBACK),  # the default; a run of this job always rolls back
    description="Roll the served champion back to the previous eligible champion (or to_version): a served_model "
    "run with action=rollback, on the restored version's partition day.",
)


@op(description="Record trained_on_erased_data for every model version whose inputs an erasure changed.")
def mark_erased_models_op(context: OpExecutionContext, feature_store: FeatureStoreResource,
                          registry: RegistryResource) -> list[int]:
    with feature_store.connect() as con, registry.connect() as reg:
        marked = mark_trained_on_erased_data(reg, con)
    context.log.info(f"versions trained on erased data: {marked or 'none new'}")
    return marked


@job(name=ERASURE_MARK_JOB, description="After a right-to-erasure request (the DataOps erase_user job): mark the "
     "model versions trained on the erased data, so they never serve again (requested by erasure_watch).")
def mark_models_trained_on_erased_data():
    mark_erased_models_op()
