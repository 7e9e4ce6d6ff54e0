"""The whole code location: every asset, check, job and resource in one plain ``Definitions``.

The feature store is the seam: ``DATAOPS_ASSETS`` (sources -> features) and ``MLOPS_ASSETS``
(features -> models -> service) share nothing but the warehouse tables, so each half can later become its
own code location.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from factory_assets.assets.features import item_daily, item_features, online_features, user_features, user_item_daily
from factory_assets.assets.models import candidate_model, training_window
from factory_assets.assets.raw import raw_events
from factory_assets.assets.serving import served_model
from factory_assets.jobs import apply_retention, erase_user
from factory_assets.resources import FactoryResource
from factory_assets.sensors import landed_files_sensor

DATAOPS_ASSETS = [raw_events, user_item_daily, item_daily, user_features, item_features, online_features]
MLOPS_ASSETS = [training_window, candidate_model, served_model]

INGEST_JOB = "daily_ingest"
TRAINING_JOB = "daily_training"

daily_ingest = define_asset_job(
    INGEST_JOB,
    selection=AssetSelection.assets(*DATAOPS_ASSETS),
    description="One UTC day: raw events from the source, then the day's feature partitions.",
)
daily_training = define_asset_job(
    TRAINING_JOB,
    selection=AssetSelection.assets(*MLOPS_ASSETS),
    description="The day's training window, candidate (with its blocking gates) and, if they pass, promotion.",
)

SENSORS = [landed_files_sensor]

defs = Definitions(
    assets=[*DATAOPS_ASSETS, *MLOPS_ASSETS],
    jobs=[daily_ingest, daily_training, apply_retention, erase_user],
    sensors=SENSORS,
    resources={"factory": FactoryResource()},
)
