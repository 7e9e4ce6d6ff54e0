"""The whole code location: every asset, check, job and resource in one plain ``Definitions``.

The feature store is the seam: ``DATAOPS_ASSETS`` (sources -> features) and ``MLOPS_ASSETS``
(features -> models -> service) share nothing but the warehouse tables, so each half can later become its
own code location.

Automation is applied here, centrally: ``Definitions.map_asset_specs(func=automation.automate)`` gives every
asset its automation condition and freshness policy (see :mod:`factory_assets.platform.automation`); the
``factory_automation`` sensor (RUNNING by default) evaluates them, so ``dagster dev`` refreshes the factory
with no clicks and no schedule.  ``MONITORING_ASSETS`` (``behaviour_drift``) reads the feature store and feeds
the candidate's retrain condition.  Runs use the in-process executor: every step shares the single-slot
``warehouse`` pool, so a process per step would only add start-up time (about 2 s vs 7.5 s for 3 steps).
``FACTORY_EXECUTOR`` swaps in Dagster's multiprocess, Celery or Kubernetes executor (``docs/scale-out.md``).
``SENSORS`` is the one list of the code location's sensors: add new ones to it here.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from factory_assets.platform import automation, executors
from factory_assets.platform.alerts import ALERT_SENSORS, AlertWebhook

from factory_assets.demo_report import adaptation_demo
from factory_assets.data.defs.features import item_daily, item_features, online_features, user_features, user_item_daily
from factory_assets.ml.defs.candidate import candidate_model, training_window
from factory_assets.data.defs.monitoring import behaviour_drift
from factory_assets.data.defs.raw import raw_events
from factory_assets.ml.defs.served import served_model
from factory_assets.ml.defs.shadow import shadow_evaluation
from factory_assets.ml.defs.champion_checks import champion_verified
from factory_assets.jobs import apply_retention, erase_user, rollback_champion
from factory_assets.resources import FactoryResource
from factory_assets.data.defs.sensors import landed_files_sensor

DATAOPS_ASSETS = [raw_events, user_item_daily, item_daily, user_features, item_features, online_features]
MLOPS_ASSETS = [training_window, candidate_model, served_model, shadow_evaluation]
MONITORING_ASSETS = [behaviour_drift]
REPORT_ASSETS = [adaptation_demo]  # external: reported by `factory demo`, never executed by Dagster

INGEST_JOB = "daily_ingest"
TRAINING_JOB = "daily_training"

daily_ingest = define_asset_job(
    INGEST_JOB,
    selection=AssetSelection.assets(*DATAOPS_ASSETS, *MONITORING_ASSETS),
    description="One UTC day: raw events from the source, the day's feature partitions and its drift verdict "
    "(automation's first tick; the candidate reads the verdict).",
)
daily_training = define_asset_job(
    TRAINING_JOB,
    selection=AssetSelection.assets(*MLOPS_ASSETS),
    description="The day's training window, candidate (with its blocking gates) and, if they pass, promotion.",
)

SENSORS = [landed_files_sensor, automation.automation_sensor, *ALERT_SENSORS]

defs = Definitions(
    assets=[*DATAOPS_ASSETS, *MLOPS_ASSETS, *MONITORING_ASSETS, *REPORT_ASSETS],
    jobs=[daily_ingest, daily_training, apply_retention, erase_user, rollback_champion],
    asset_checks=[champion_verified],
    sensors=SENSORS,
    resources={"factory": FactoryResource(), "alert_webhook": AlertWebhook()},
    executor=executors.executor_for(),  # FACTORY_EXECUTOR: in_process (default) | multiprocess | celery | k8s
).map_asset_specs(func=automation.automate)
