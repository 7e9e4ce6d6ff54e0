"""The MLOps code location: models, the served champion and their guards, over the feature store.

``defs`` is a complete ``Definitions`` (``dagster dev -m factory_assets.ml.defs.definitions``); the lists
(``ASSETS``, ``LIVE_ASSETS``, ``ASSET_CHECKS``, ``JOBS``, ``SENSORS``, ``RESOURCES``) let
``factory_assets.definitions`` merge it with the DataOps location.  The DataOps assets appear as external
:class:`AssetSpec` (same keys, groups and daily partitions: :data:`EXTERNAL_DATA_ASSETS`; the unpartitioned
``intraday_features`` that ``live_state`` follows: :data:`EXTERNAL_INTRADAY`), so the lineage graph is one; nothing
here imports ``factory_assets.data``.  :data:`EXTERNAL_SPECS` is both (what this location alone declares: the merged
definitions have the real assets).

Resource keys: ``feature_store`` (:class:`FeatureStoreResource`), ``registry`` (:class:`RegistryResource`),
``artefacts`` (:class:`ArtefactStore`), ``model_policy`` (:class:`ModelPolicy`); the defaults read
``FACTORY_HOME`` / ``FACTORY_SOURCE`` / ``FACTORY_REGISTRY_URL`` / ``FACTORY_WINDOW_DAYS`` /
``FACTORY_HISTORY_DAYS`` when a run uses them.
"""

from __future__ import annotations

from dagster import AssetKey, AssetSelection, AssetSpec, Definitions

from factory_assets.feature_store.contract import DATA_ASSET_GROUPS, DATA_ASSET_KEYS
from factory_assets.ml.defs.candidate import candidate_model, training_window
from factory_assets.ml.defs.champion_checks import champion_verified
from factory_assets.ml.defs.jobs import (
    ROLLBACK_JOB,
    TRAINING_JOB,
    daily_training,
    mark_models_trained_on_erased_data,
    rollback_champion,
)
from factory_assets.ml.defs.live import LIVE_STATE, live_state
from factory_assets.ml.defs.sensors import champion_guard, erasure_watch, shadow_promoter
from factory_assets.ml.defs.served import served_model
from factory_assets.ml.defs.shadow import shadow_evaluation
from factory_assets.ml.resources import ml_resources
from factory_assets.platform import automation, executors, keys
from factory_assets.platform.alerts import ALERT_SENSORS, AlertWebhook
from factory_assets.platform.partitions import DAILY, GROUP_FEATURES

EXTERNAL_DATA_ASSETS = [
    AssetSpec(key, group_name=DATA_ASSET_GROUPS[key], partitions_def=DAILY,
              description=f"{key}: materialised by the DataOps code location (feature store contract)")
    for key in DATA_ASSET_KEYS
]
EXTERNAL_INTRADAY = AssetSpec(
    keys.INTRADAY_FEATURES, group_name=GROUP_FEATURES,
    description=f"{keys.INTRADAY_FEATURES}: today so far, materialised by the DataOps code location every ~15 minutes "
    "(feature store contract: intraday_*)",
)
EXTERNAL_SPECS = [*EXTERNAL_DATA_ASSETS, EXTERNAL_INTRADAY]
__all__ = ["ASSETS", "LIVE_ASSETS", "ASSET_CHECKS", "JOBS", "SENSORS", "RESOURCES", "EXTERNAL_DATA_ASSETS",
           "EXTERNAL_INTRADAY", "EXTERNAL_SPECS", "TRAINING_JOB", "ROLLBACK_JOB", "AUTOMATION_SENSOR", "LOCATION_NAME",
           "defs"]
LOCATION_NAME = "mlops"
AUTOMATION_SENSOR = "mlops_automation"
ASSETS = [training_window, candidate_model, served_model, shadow_evaluation]  # daily-partitioned (daily_training)
# Not partitioned (today so far, for the champion of now): never in a partitioned run, so not in ASSETS
LIVE_ASSETS = [live_state]
ASSET_CHECKS = [champion_verified]
JOBS = [daily_training, rollback_champion, mark_models_trained_on_erased_data]
SENSORS = [champion_guard, shadow_promoter, erasure_watch, *ALERT_SENSORS]
# feature_store, registry, artefacts, model_policy (environment at run time), and where alerts go
RESOURCES = {**ml_resources(), "alert_webhook": AlertWebhook()}
OWN_KEYS = [AssetKey(k) for k in (*keys.ML_KEYS, LIVE_STATE)]  # live_state: keeps its own condition and freshness

defs = Definitions(
    assets=[*EXTERNAL_SPECS, *ASSETS, *LIVE_ASSETS],
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    sensors=[*SENSORS, automation.automation_sensor_for(AUTOMATION_SENSOR, AssetSelection.assets(*OWN_KEYS))],
    resources=RESOURCES,
    executor=executors.executor_for(),
).map_resolved_asset_specs(func=automation.automate, selection=AssetSelection.assets(*OWN_KEYS))
