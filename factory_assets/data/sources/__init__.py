"""Event sources (no Dagster imports): the simulator, UCI Online Retail (I and II), MovieLens, a landing folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory_assets.data.sources.base import DayBatch, EventSource, PermanentSourceError, TransientSourceError

__all__ = ["DayBatch", "EventSource", "PermanentSourceError", "TransientSourceError", "make_source"]


def make_source(name: str, path: str | Path | None = None, **options: Any) -> EventSource:
    """Build a source by name.

    Args:
        name: ``simulator``, ``online_retail``, ``movielens`` or ``folder`` (a landing directory).
        path: file or folder for the file-based sources (ignored by the simulator).
        options: simulator overrides (fields of ``SimulatorConfig``).

    Raises:
        ValueError: for an unknown name, or a file-based source without a path.
    """
    if name == "simulator":
        from factory_assets.data.sources.simulator import ShopSimulator

        return ShopSimulator(**options)
    if name in ("online_retail", "movielens", "folder"):
        if not path:
            raise ValueError(f"source {name!r} needs a path (FACTORY_SOURCE_PATH or --path)")
        if name == "online_retail":
            from factory_assets.data.sources.online_retail import OnlineRetailSource

            return OnlineRetailSource(path)
        if name == "folder":
            from factory_assets.data.sources.folder import FolderSource

            return FolderSource(path)
        from factory_assets.data.sources.movielens import MovieLensSource

        return MovieLensSource(path)
    raise ValueError(f"unknown source {name!r}; known: simulator, online_retail, movielens, folder")
