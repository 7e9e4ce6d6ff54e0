"""Every resource of both halves for one home and source: the single-process wiring of ``factory run``,
``factory demo``, the tests and the benchmarks.

``Factory`` is a plain bundle, not a Dagster resource: :meth:`Factory.resources` gives the resource instances
keyed as the definitions expect (``warehouse``, ``event_source``: DataOps; ``feature_store``, ``registry``,
``artefacts``, ``model_policy``: MLOps) and :meth:`Factory.run_config` the same choice as run configuration of
the definitions' own resources (what ``factory run`` passes to every run, so a run never depends on the
launching shell's environment).  Like :mod:`factory_assets.definitions`, this module joins the two halves;
neither half imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import duckdb
from sqlalchemy.engine import Connection

from factory_assets.data.resources import EventSourceResource, SimulatorOptions, WarehouseResource
from factory_assets.data.sources import EventSource
from factory_assets.ml.resources import ModelPolicy, PromotionPolicy, ml_resources
from factory_assets.platform.settings import HomeLayout

__all__ = ["Factory", "PromotionPolicy", "SimulatorOptions"]


def _plain(value) -> dict:
    return {} if value is None else dict(value.model_dump() if hasattr(value, "model_dump") else value)


@dataclass(frozen=True)
class Factory:
    """Where the factory lives and what it reads: home directory, source and its options, gates.

    ``simulator``: :class:`SimulatorOptions` or a dict of its fields; ``policy``: :class:`PromotionPolicy` /
    :class:`ModelPolicy` or a dict of their fields (``window_days``, ``history_days`` and the thresholds).
    """

    home: str
    source: str = "simulator"
    source_path: str = ""
    simulator: SimulatorOptions | dict | None = None
    fault_rate: float = 0.0
    fault_seed: int = 0
    policy: PromotionPolicy | dict | None = None
    registry_url: str | None = None
    storage: str | None = None

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.home).expanduser().resolve(), self.source)

    def _home_scope(self) -> dict:
        return {"home": str(self.layout.home), "source": self.source}

    def _store_scope(self) -> dict:
        """The scope of the resources that open the warehouse: the home, and the storage when one is chosen."""
        return {**self._home_scope(), **({"storage": self.storage} if self.storage else {})}

    def _event_source_config(self) -> dict:
        return {**self._home_scope(), "source_path": self.source_path, "simulator": _plain(self.simulator),
                "fault_rate": self.fault_rate, "fault_seed": self.fault_seed}

    def resources(self) -> dict:
        """Resource instances for ``materialize()`` / ``execute_in_process``, keyed as in the definitions."""
        return {
            "warehouse": WarehouseResource(**self._store_scope()),
            "event_source": self.event_source_resource,
            **ml_resources(registry_url=self.registry_url, **self._store_scope(), **_plain(self.policy)),
        }

    def run_config(self) -> dict:
        """The ``resources`` section of a run config that points the definitions' resources at this factory."""
        scope = self._home_scope()
        return {
            "warehouse": {"config": self._store_scope()},
            "event_source": {"config": self._event_source_config()},
            "feature_store": {"config": self._store_scope()},
            "registry": {"config": {**scope, "url": self.registry_url}},
            "artefacts": {"config": scope},
            "model_policy": {"config": _plain(self.policy)},
        }

    @cached_property
    def event_source_resource(self) -> EventSourceResource:
        return EventSourceResource(**self._event_source_config())

    @property
    def event_source(self) -> EventSource:
        """The configured :class:`EventSource`."""
        return self.event_source_resource.event_source

    @property
    def model_policy(self) -> ModelPolicy:
        return ModelPolicy(**_plain(self.policy))

    @contextmanager
    def warehouse(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the warehouse (every DataOps table ensured)."""
        with WarehouseResource(**self._store_scope()).connect() as con:
            yield con

    @contextmanager
    def registry(self) -> Iterator[Connection]:
        """A connection to the model registry (its own SQL store, never the warehouse)."""
        with self.resources()["registry"].connect() as con:
            yield con
