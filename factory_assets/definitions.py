"""The whole factory in ONE ``Definitions``, for single-process use.

Use this module for ``dagster asset materialize -m factory_assets.definitions``, ``materialize()`` in tests,
``factory run`` and ``factory demo``: every asset, check, job and resource of both halves, so a run may span
the seam (e.g. ``daily_ingest`` then ``daily_training`` on one instance without a workspace).

Use ``workspace.yaml`` (``dagster dev``, ``factory dev``) for the deployed shape: two code locations,
:mod:`factory_assets.data.defs.definitions` (DataOps) and :mod:`factory_assets.ml.defs.definitions` (MLOps),
that a data team and an ML team each own and reload on their own.  This module adds nothing of its own but
the ``adaptation_demo`` report asset and one automation sensor over every asset (``factory_automation``);
each location has its own (``dataops_automation``, ``mlops_automation``).

Automation is applied centrally: ``map_asset_specs(func=automation.automate)`` gives every asset its automation
condition and freshness policy (see :mod:`factory_assets.platform.automation`).  Runs use the in-process
executor: every step that opens the warehouse shares the single-slot ``warehouse`` pool, so a process per step
would only add start-up time.  ``FACTORY_EXECUTOR`` swaps in Dagster's multiprocess, Celery or Kubernetes
executor (``docs/scale-out.md``).
"""

from __future__ import annotations

from dagster import Definitions

from factory_assets.data.defs import definitions as dataops
from factory_assets.demo_report import adaptation_demo
from factory_assets.ml.defs import definitions as mlops
from factory_assets.platform import automation, executors

INGEST_JOB = dataops.INGEST_JOB
TRAINING_JOB = mlops.TRAINING_JOB
DATAOPS_ASSETS = dataops.FEATURE_ASSETS  # sources -> raw events -> feature views
MONITORING_ASSETS = dataops.MONITORING_ASSETS  # behaviour_drift
MLOPS_ASSETS = mlops.ASSETS  # training window -> candidate -> served model -> shadow evaluation
INTRADAY_ASSETS = [*dataops.INTRADAY_ASSETS, *mlops.LIVE_ASSETS]  # intraday_features -> live_state (every ~15 min)
REPORT_ASSETS = [adaptation_demo]  # external: reported by `factory demo`, never executed by Dagster

# The one list of sensors of the single-process definitions (each sensor object once).
SENSORS = list({id(s): s for s in [*dataops.SENSORS, *mlops.SENSORS, automation.automation_sensor]}.values())

defs = Definitions(
    assets=[*DATAOPS_ASSETS, *MONITORING_ASSETS, *MLOPS_ASSETS, *INTRADAY_ASSETS, *REPORT_ASSETS],
    asset_checks=list(mlops.ASSET_CHECKS),
    jobs=[*dataops.JOBS, *mlops.JOBS],
    sensors=SENSORS,
    resources={**dataops.RESOURCES, **mlops.RESOURCES},
    executor=executors.executor_for(),  # FACTORY_EXECUTOR: in_process (default) | multiprocess | celery | k8s
).map_asset_specs(func=automation.automate)


def ingest_job():
    """``daily_ingest`` as a :func:`dagster.reconstructable` target: a run executed with ``execute_job`` (the
    multiprocess, Celery and Kubernetes executors) is rebuilt from it in every step's process."""
    return defs.resolve_job_def(INGEST_JOB)


def training_job():
    """``daily_training`` as a :func:`dagster.reconstructable` target (see :func:`ingest_job`)."""
    return defs.resolve_job_def(TRAINING_JOB)
