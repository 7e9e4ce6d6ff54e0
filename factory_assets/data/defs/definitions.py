"""The DataOps code location: sources -> raw events -> feature store views -> drift; retention, erasure, landing;
the intraday path (``intraday_features``, today so far, every quarter of an hour).

Load it alone (``dagster dev -m factory_assets.data.defs.definitions``) or beside the MLOps location
(``workspace.yaml``).  It imports nothing of the MLOps half (no ``implicit``, no scikit-learn, no model
registry): the MLOps assets appear here as external asset specs under the same keys
(:mod:`factory_assets.platform.keys`), so the UI still draws one lineage graph.  Its automation sensor
(``dataops_automation``) evaluates only the assets of this location.
"""

from __future__ import annotations

from dagster import AssetKey, AssetSelection, AssetSpec, Definitions, define_asset_job

from factory_assets.data.defs.features import item_daily, item_features, online_features, user_features, user_item_daily
from factory_assets.data.defs.intraday import intraday_features
from factory_assets.data.defs.maintenance_jobs import apply_retention, erase_user
from factory_assets.data.defs.monitoring import behaviour_drift
from factory_assets.data.defs.raw import raw_events
from factory_assets.data.defs.sensors import landed_files_sensor
from factory_assets.data.resources import EventSourceResource, WarehouseResource
from factory_assets.platform import automation, executors, keys
from factory_assets.platform.alerts import AlertWebhook, run_failure_alert
from factory_assets.platform.partitions import DAILY, GROUP_MODELS, GROUP_SERVING

LOCATION_NAME = "dataops"
AUTOMATION_SENSOR = "dataops_automation"
INGEST_JOB = "daily_ingest"

FEATURE_ASSETS = [raw_events, user_item_daily, item_daily, user_features, item_features, online_features]
MONITORING_ASSETS = [behaviour_drift]
ASSETS = [*FEATURE_ASSETS, *MONITORING_ASSETS]  # the daily-partitioned ones: daily_ingest
# Not partitioned (today so far): never in a partitioned run, so neither in ASSETS nor in daily_ingest
INTRADAY_ASSETS = [intraday_features]

# The MLOps half's assets, as this location sees them: never executed here, drawn downstream of the views.
ML_SPECS = [
    AssetSpec(keys.TRAINING_WINDOW, deps=[keys.USER_ITEM_DAILY, keys.ITEM_DAILY], partitions_def=DAILY,
              group_name=GROUP_MODELS, description="MLOps location: the training window read from the feature store."),
    AssetSpec(keys.CANDIDATE_MODEL, deps=[keys.TRAINING_WINDOW], partitions_def=DAILY,
              group_name=GROUP_MODELS, description="MLOps location: the day's candidate and its gates."),
    AssetSpec(keys.SERVED_MODEL, deps=[keys.CANDIDATE_MODEL], partitions_def=DAILY, group_name=GROUP_SERVING,
              description="MLOps location: the champion alias."),
    AssetSpec(keys.SHADOW_EVALUATION, deps=[keys.USER_ITEM_DAILY], partitions_def=DAILY,
              group_name=GROUP_SERVING, description="MLOps location: the shadow model judged on live traffic."),
]

daily_ingest = define_asset_job(
    INGEST_JOB,
    selection=AssetSelection.assets(*ASSETS),
    description="One UTC day: raw events from the source, the day's feature partitions and its drift verdict.",
)
JOBS = [daily_ingest, apply_retention, erase_user]
SENSORS = [landed_files_sensor, run_failure_alert]
RESOURCES = {"warehouse": WarehouseResource(), "event_source": EventSourceResource(), "alert_webhook": AlertWebhook()}
OWN_KEYS = [AssetKey(k) for k in keys.DATA_KEYS]

defs = Definitions(
    assets=[*ASSETS, *INTRADAY_ASSETS, *ML_SPECS],
    jobs=JOBS,
    sensors=[*SENSORS, automation.automation_sensor_for(AUTOMATION_SENSOR, AssetSelection.assets(*OWN_KEYS))],
    resources=RESOURCES,
    executor=executors.executor_for(),
).map_resolved_asset_specs(func=automation.automate, selection=AssetSelection.assets(*OWN_KEYS))
