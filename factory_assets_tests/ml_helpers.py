"""Test helpers of the MLOps half: its resources scoped to a test home, and training / served-model runs."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize  # noqa: F401  (AssetKey re-exported)

from factory_assets.ml import registry
from factory_assets.ml.defs.candidate import candidate_model, training_window
from factory_assets.ml.defs.champion_checks import champion_verified
from factory_assets.ml.defs.served import served_model, served_model_run_config
from factory_assets.ml.defs.shadow import shadow_evaluation
from factory_assets.ml.resources import ml_resources

SOURCE = "simulator"
ML_ASSETS = [training_window, candidate_model, served_model, shadow_evaluation]
TRAIN = ["training_window", "candidate_model", "served_model"]


def resources(home: Path, **policy) -> dict:
    """``feature_store``, ``registry``, ``artefacts``, ``model_policy`` of ``home``'s simulator namespace;
    ``policy``: :class:`~factory_assets.ml.resources.ModelPolicy` fields."""
    return ml_resources(home=str(home), source=SOURCE, **policy)


def registry_url(home: Path) -> str:
    return registry.default_url(Path(home) / SOURCE)


def connect(home: Path):
    """A connection to ``home``'s registry (a context manager)."""
    return registry.connect(registry_url(home))


def aliases(home: Path) -> Path:
    return Path(home) / SOURCE / "aliases"


def train(home: Path, day: date, instance: DagsterInstance | None = None, candidate: dict | None = None,
          **policy) -> ExecuteInProcessResult:
    """training_window -> candidate_model -> served_model (action promote) for ``day``."""
    config = None if candidate is None else {"ops": {"candidate_model": {"config": candidate}}}
    return materialize(
        ML_ASSETS, selection=TRAIN, partition_key=day.isoformat(), resources=resources(home, **policy),
        instance=instance, raise_on_error=False, run_config=config,
    )


def serve(home: Path, action: str, version: int | None, partition: str, instance: DagsterInstance | None = None,
          reason: str = "", actor: str = "test") -> ExecuteInProcessResult:
    """One ``served_model`` run with the given action."""
    return materialize(
        [served_model, champion_verified], selection=["served_model"], partition_key=partition,
        resources=resources(home), instance=instance, raise_on_error=False,
        run_config=served_model_run_config(action, version, reason, actor),
    )


# --------------------------------------------------------------------------- an ingested home (DataOps, for the ML tests)
SMALL_SHOP = {"n_users": 400, "n_items": 120, "events_per_day": 3000, "seed": 11, "shift_date": "2024-11-11"}
_INGESTED: dict[str, Path] = {}


def data_resources(home: Path) -> dict:
    """The DataOps resources of ``home`` (the small simulated shop)."""
    from factory_assets.data.resources import EventSourceResource, SimulatorOptions, WarehouseResource

    return {
        "warehouse": WarehouseResource(home=str(home), source=SOURCE),
        "event_source": EventSourceResource(home=str(home), source=SOURCE, source_path="",
                                            simulator=SimulatorOptions(**SMALL_SHOP)),
    }


def ingest(home: Path, ingest_days: list[date]) -> None:
    """Materialise raw events and the feature views (DataOps location) of each day."""
    from factory_assets.data.defs.definitions import FEATURE_ASSETS

    for day in ingest_days:
        result = materialize(FEATURE_ASSETS, partition_key=day.isoformat(), resources=data_resources(home),
                             raise_on_error=False)
        assert result.success, f"ingest {day} failed"


def ingested(tmp_path_factory, n_days: int = 36) -> Path:
    """A home with ``n_days`` days from 2024-10-01 of the small shop ingested, built once per session; copy it
    (:func:`copy_home`) before changing it."""
    from datetime import timedelta

    key = f"ingested-{n_days}"
    if key not in _INGESTED:
        home = tmp_path_factory.mktemp("ml_ingested")
        ingest(home, [date(2024, 10, 1) + timedelta(days=i) for i in range(n_days)])
        _INGESTED[key] = home
    return _INGESTED[key]


def copy_home(src: Path, dst: Path) -> Path:
    """A private copy of a home; absolute manifest paths (registry rows, alias files) moved along."""
    import json
    import shutil

    shutil.copytree(src, dst)
    if (Path(dst) / SOURCE / registry.REGISTRY_FILE).exists():
        with connect(dst) as con:
            con.exec_driver_sql("UPDATE model_versions SET manifest_path = replace(manifest_path, ?, ?)", (str(src), str(dst)))
    for path in aliases(dst).glob("*.json") if aliases(dst).exists() else []:
        pointer = json.loads(path.read_text())
        pointer["path"] = pointer["path"].replace(str(src), str(dst))
        path.write_text(json.dumps(pointer, indent=2, sort_keys=True) + "\n")
    return dst
