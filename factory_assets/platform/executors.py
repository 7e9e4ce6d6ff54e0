"""The code location's executor, chosen by configuration: the same assets on one process, many, or a cluster.

``FACTORY_EXECUTOR`` (read when definitions load, :func:`factory_assets.platform.settings.executor_name`) selects one of
Dagster's own executors; nothing here schedules steps itself:

================  ==========================================================================================
``in_process``    (default) every step in the run's process: the cheapest on one machine, since every step
                  shares the single-slot ``warehouse`` pool anyway
``multiprocess``  ``dagster.multiprocess_executor``: a process per step.  Run config ``execution: {config:
                  {max_concurrent: N, tag_concurrency_limits: [...]}}`` bounds it; pools still apply
``celery``        ``dagster_celery.celery_executor`` (extra ``factory_assets[celery]``): steps are Celery tasks
                  picked up by ``dagster-celery worker`` processes; broker and result backend come from
                  ``DAGSTER_CELERY_BROKER_URL`` and ``DAGSTER_CELERY_BACKEND_URL``, resolved when a run starts
``k8s``           ``dagster_k8s.k8s_job_executor`` (extra ``factory_assets[k8s]``): a Kubernetes Job per step,
                  with the run launcher's image, env and volumes; run config may set ``max_concurrent``,
                  ``tag_concurrency_limits``, ``step_k8s_config``
================  ==========================================================================================

Every one of them honours the instance's concurrency pools (``dagster.yaml``: ``warehouse`` limit 1): a step
claims its pool slot before it is launched, so two steps never hold the DuckDB file at once, whatever runs
them.  ``celery`` and ``k8s`` are imported only when chosen, so the default install needs neither package.
See ``docs/scale-out.md`` and ``deploy/``.
"""

from __future__ import annotations

import importlib

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from factory_assets.platform import settings

# Optional executors: name -> (module, attribute, pip extra, distribution).
OPTIONAL_EXECUTORS: dict[str, tuple[str, str, str, str]] = {
    "celery": ("dagster_celery", "celery_executor", "celery", "dagster-celery"),
    "k8s": ("dagster_k8s", "k8s_job_executor", "k8s", "dagster-k8s"),
}
CELERY_BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"
CELERY_BACKEND_ENV = "DAGSTER_CELERY_BACKEND_URL"


class MissingExecutorPackage(ImportError):
    """The chosen executor's integration package is not installed (the message names the extra)."""


def celery_config() -> dict:
    """Fixed config of the Celery executor: broker and result backend read from the environment when a run starts.

    ``{"env": NAME}`` keeps the URLs, which may carry credentials, out of the stored run config; the Celery
    workers start with the same two variables (``deploy/celery/celery.yaml``).  ``rpc://`` is the usual
    backend with RabbitMQ.
    """
    return {"broker": {"env": CELERY_BROKER_ENV}, "backend": {"env": CELERY_BACKEND_ENV}}


def _optional_executor(name: str) -> ExecutorDefinition:
    module_name, attribute, extra, distribution = OPTIONAL_EXECUTORS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingExecutorPackage(
            f"FACTORY_EXECUTOR={name} needs the {distribution} package, which is not installed: "
            f"pip install 'factory_assets[{extra}]' (or pip install -e '.[{extra}]' in this repository)"
        ) from exc
    executor_def: ExecutorDefinition = getattr(module, attribute)
    if name == "celery":
        return executor_def.configured(celery_config(), name="celery")
    return executor_def


def executor_for(name: str | None = None) -> ExecutorDefinition:
    """The executor definition for ``name`` (default: ``FACTORY_EXECUTOR``, see the module table).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        MissingExecutorPackage: for ``celery`` / ``k8s`` without their package (the message names the extra).
    """
    if name is None:
        name = settings.executor_name()
    if name == "in_process":
        return in_process_executor
    if name == "multiprocess":
        return multiprocess_executor
    if name in OPTIONAL_EXECUTORS:
        return _optional_executor(name)
    raise ValueError(f"unknown executor {name!r}: expected one of {', '.join(settings.EXECUTOR_NAMES)}")
