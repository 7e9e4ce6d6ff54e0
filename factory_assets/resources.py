"""Dagster resources: the factory's home, its event source and its warehouse, as run configuration.

``FactoryResource`` is the only resource the assets need.  Its defaults come from the environment when
definitions load (``FACTORY_HOME``, ``FACTORY_SOURCE``, ``FACTORY_SOURCE_PATH``); ``factory run`` passes the
chosen values as run config to every run, so a run never depends on the launching shell's environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from functools import cached_property
from pathlib import Path

import duckdb
from dagster import Config, ConfigurableResource
from dagster_duckdb import DuckDBResource
from pydantic import Field

from factory_assets.platform import settings
from factory_assets.feature_store import store
from factory_assets.ml import registry
from factory_assets.platform.settings import HomeLayout
from factory_assets.data.sources import EventSource, make_source
from factory_assets.data.sources.faults import FlakySource
from factory_assets.data import maintenance, warehouse


class SimulatorOptions(Config):
    """Overrides of the simulator's defaults (see ``factory_assets.data.sources.simulator.SimulatorConfig``)."""

    seed: int = Field(default=7, description="world and per-day seed")
    n_users: int = Field(default=3000, description="number of simulated users")
    n_items: int = Field(default=800, description="number of simulated items")
    events_per_day: float = Field(default=20_000, description="mean events on a plain weekday")
    shift_date: str = Field(default="2024-11-11", description="first UTC day of shifted preferences (ISO)")
    shift_strength: float = Field(default=1.5, description="log-multiplier of the preference shift; 0 = none")


class PromotionPolicy(Config):
    """Thresholds of the promotion gates (blocking asset checks on ``candidate_model``)."""

    baseline_margin: float = Field(
        default=0.01, description="candidate NDCG@10 must be >= (1 + margin) x the best baseline's"
    )
    champion_tolerance: float = Field(
        default=0.02,
        description="the bootstrap interval of candidate - champion NDCG@10 must lie above -tolerance (absolute)",
    )
    confidence: float = Field(default=0.95, description="confidence level of the paired bootstrap interval")
    bootstrap_resamples: int = Field(default=2000, description="bootstrap resamples of the evaluated users")
    max_artefact_mb: float = Field(default=256.0, description="largest servable artefact, MiB")
    max_recommend_ms: float = Field(default=50.0, description="p99 latency budget of one top-10 request, ms")
    sample_users: int = Field(default=200, description="users sampled for the serving smoke test")


class FactoryResource(ConfigurableResource):
    """Where the factory lives and what it reads: home directory, source and its options, gates."""

    home: str = Field(default_factory=lambda: str(settings.factory_home()), description="FACTORY_HOME")
    source: str = Field(default_factory=settings.source_name, description="simulator | online_retail | movielens | folder")
    source_path: str = Field(default_factory=settings.source_path, description="file or folder of the source")
    simulator: SimulatorOptions = Field(default_factory=SimulatorOptions)
    fault_rate: float = Field(
        default=0.0, description="fault injection: share of source reads that fail with a transient error (0 = off)"
    )
    fault_seed: int = Field(default=0, description="seed of the injected faults")
    policy: PromotionPolicy = Field(default_factory=PromotionPolicy)

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.home).expanduser().resolve(), self.source)

    @cached_property
    def event_source(self) -> EventSource:
        """The configured :class:`EventSource` (built once per resource instance)."""
        options = {}
        if self.source == "simulator":
            options = self.simulator.model_dump()
            options["shift_date"] = date.fromisoformat(options["shift_date"])
        source = make_source(self.source, self.source_path or None, **options)
        return FlakySource(source, self.fault_rate, self.fault_seed) if self.fault_rate > 0 else source

    @contextmanager
    def warehouse(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to this source's warehouse, schema ensured, session time zone UTC.

        Opening retries with back-off while another process holds the file (``DuckDBResource``); steps that
        open it share the ``warehouse`` pool so the multiprocess executor never contends for the lock.
        """
        layout = self.layout.ensure()
        with DuckDBResource(database=str(layout.warehouse)).get_connection() as con:
            con.execute("SET TimeZone = 'UTC'")
            warehouse.ensure_schema(con)
            store.ensure_schema(con)
            registry.ensure_schema(con)
            maintenance.ensure_schema(con)
            yield con
