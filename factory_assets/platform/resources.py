"""What every resource of the factory is scoped by: a home directory and a source namespace.

``HomeScoped`` is the base of the resources of both halves (warehouse, event source, feature store, registry,
artefact store).  Its fields default to ``None``, which means "the environment's value, resolved when a run
uses the resource" (``FACTORY_HOME``, ``FACTORY_SOURCE`` through :mod:`factory_assets.platform.settings`,
the only reader of the environment): importing definitions reads nothing, and a run launched from the UI,
the daemon or ``factory run`` with the same run config does the same thing.
"""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from factory_assets.platform import settings
from factory_assets.platform.settings import HomeLayout


class HomeScoped(ConfigurableResource):
    """A resource that lives under ``<home>/<source>/``."""

    home: str | None = Field(default=None, description="factory home directory; default: FACTORY_HOME (at run time)")
    source: str | None = Field(
        default=None, description="simulator | online_retail | movielens | folder; default: FACTORY_SOURCE (at run time)"
    )

    storage: str | None = Field(
        default=None,
        description="warehouse storage of a new home: duckdb | parquet; default: FACTORY_STORAGE or duckdb (at run "
                    "time); a home that holds a warehouse keeps its own",
    )

    @property
    def storage_name(self) -> str:
        """``duckdb`` or ``parquet``: what this home holds, else the configured or ``FACTORY_STORAGE`` choice.

        Raises:
            SettingsError: an unknown name, or one that differs from what the home already holds.
        """
        wanted = self.storage or settings.storage_name()
        if wanted is not None and wanted not in settings.STORAGE_NAMES:
            raise settings.SettingsError(f"storage {wanted!r} is not one of {', '.join(settings.STORAGE_NAMES)}")
        return self.layout.storage(wanted)

    @property
    def source_name(self) -> str:
        """The configured source, or ``FACTORY_SOURCE`` (raises ``SettingsError`` for an unknown name)."""
        name = self.source or settings.source_name()
        if name not in settings.SOURCE_NAMES:
            raise settings.SettingsError(f"source {name!r} is not one of {', '.join(settings.SOURCE_NAMES)}")
        return name

    @property
    def layout(self) -> HomeLayout:
        """Paths of this source's namespace (nothing is created; call ``.ensure()``)."""
        home = Path(self.home).expanduser().resolve() if self.home else settings.factory_home()
        return HomeLayout(home, self.source_name)
