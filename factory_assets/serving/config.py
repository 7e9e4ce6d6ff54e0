"""Service configuration: :class:`ServiceConfig` (what ``factory serve`` reads at start-up) and the request limits.

The limits are fixed, not configurable: ``MAX_K`` (longest list), ``MAX_BATCH`` (users per ``POST
/recommendations``), ``MAX_BODY_BYTES`` (request body), ``MAX_USER_ID`` (characters in a user id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from factory_assets.platform.settings import HomeLayout
from factory_assets.serving.scorer import ItemFilter

MAX_K = 1000
MAX_BATCH = 1000
MAX_BODY_BYTES = 256 * 1024
MAX_USER_ID = 128
ADMIN_PREFIX = "/admin"
DOCS_ASSETS_URL = "/docs-assets"  # where the Swagger UI / ReDoc files of fastapi-offline are served


@dataclass
class ServiceConfig:
    """Where the service reads its models and writes its logs (see :meth:`from_env`)."""

    home: Path
    source: str = "simulator"
    admin_token: str | None = None
    landing_dir: Path | None = None
    item_filter: ItemFilter = field(default_factory=ItemFilter)
    exclude_purchased: bool = False
    poll_interval_s: float = 1.0
    flush_rows: int = 5000
    flush_interval_s: float = 5.0
    drain_interval_s: float = 0.05  # the log thread wakes this often, not per request (no GIL hand-off per request)
    watch: bool = True
    log_process: bool = True  # write the logs from a forked child process (see log_writer.LogWriter)
    precompute_process: bool = True  # score a ranker's users in a niced child interpreter (scorer.RankedLists)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc), repr=False)  # tests fix it

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.home), self.source)

    @classmethod
    def from_env(cls, **overrides) -> "ServiceConfig":
        """``FACTORY_HOME``, ``FACTORY_SOURCE``, ``FACTORY_ADMIN_TOKEN``; landing directory from
        ``FACTORY_SERVE_LANDING`` (or ``FACTORY_SOURCE_PATH`` when the source is ``folder``); business filters
        from ``FACTORY_SERVE_CATALOGUE`` / ``FACTORY_SERVE_EXCLUDED`` (files, one item id per line)."""
        from factory_assets.platform import settings

        source = overrides.get("source") or settings.source_name()  # raises SettingsError for an unknown name
        service = settings.service_settings()
        landing = service["landing"] or (settings.source_path() if source == "folder" else None)
        values = {
            "home": settings.factory_home(),
            "source": source,
            "admin_token": service["admin_token"],
            "landing_dir": Path(landing) if landing else None,
            "item_filter": ItemFilter.from_files(service["catalogue"], service["excluded"]),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
