"""The code location's two daily jobs with the multiprocess executor (one process per step), for
benchmarks/factory_overhead.py.  Same selections, assets, checks and resources as ``factory_assets.definitions``;
only the executor differs.  Module-level functions so ``dagster.reconstructable`` can rebuild them in step
processes (benchmarks/ must be on PYTHONPATH there; _cycle_worker.py sets it)."""

from __future__ import annotations

from functools import lru_cache

from dagster import Definitions, define_asset_job, multiprocess_executor


@lru_cache(maxsize=1)
def _defs() -> Definitions:
    from factory_assets import definitions as d

    # the locations' own (unresolved) asset jobs: their selections, rebuilt with another executor
    by_name = {j.name: j for j in (*d.dataops.JOBS, *d.mlops.JOBS)}
    jobs = [define_asset_job(j.name, selection=j.selection, executor_def=multiprocess_executor)
            for j in (by_name[d.INGEST_JOB], by_name[d.TRAINING_JOB])]
    return Definitions(
        assets=[*d.DATAOPS_ASSETS, *d.MLOPS_ASSETS, *d.MONITORING_ASSETS],
        asset_checks=list(d.mlops.ASSET_CHECKS),
        jobs=jobs,
        resources={**d.dataops.RESOURCES, **d.mlops.RESOURCES},
    )


def daily_ingest_mp():
    return _defs().resolve_job_def("daily_ingest")


def daily_training_mp():
    return _defs().resolve_job_def("daily_training")
