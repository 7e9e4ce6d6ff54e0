"""Resources of the MLOps half, one per concern (the feature store's is
:class:`factory_assets.feature_store.resource.FeatureStoreResource`).

==================  =====================================  ==================================================
resource key        class                                  what it gives
==================  =====================================  ==================================================
``registry``        :class:`RegistryResource`              connections to the model registry's own SQL store
``artefacts``       :class:`ArtefactStore`                 the artefact folder and the alias pointer files
``model_policy``    :class:`ModelPolicy`                   window / history lengths and promotion thresholds
==================  =====================================  ==================================================

Every field that defaults to ``None`` is resolved when a run uses the resource (environment through
:mod:`factory_assets.platform.settings`), never at import.  None of them touches the warehouse (DuckDB), so
registry commands, rollbacks and the service never wait for its lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy.engine import Connection, Engine

from factory_assets.ml import registry
from factory_assets.platform import settings
from factory_assets.platform.resources import HomeScoped


class RegistryResource(HomeScoped):
    """The model registry (``model_versions``, ``promotion_decisions``, ``model_events``).

    Store: ``url`` when set, else ``FACTORY_REGISTRY_URL``, else the SQLite file ``<home>/<source>/registry.db``
    (WAL, busy timeout: several processes may use it at once).
    """

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry (e.g. postgresql+psycopg2://...); default: FACTORY_REGISTRY_URL, "
        "else sqlite:///<home>/<source>/registry.db (at run time)",
    )

    @property
    def resolved_url(self) -> str:
        """The URL in use (raises ``SettingsError`` for a malformed ``FACTORY_REGISTRY_URL``)."""
        return self.url or settings.registry_url() or registry.default_url(self.layout.root)

    @property
    def engine(self) -> Engine:
        """The (per process cached) SQLAlchemy engine of :attr:`resolved_url`."""
        return registry.engine(self.resolved_url)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """An autocommit registry connection, schema ensured (see :func:`factory_assets.ml.registry.connect`)."""
        with registry.connect(self.resolved_url) as con:
            yield con


class ArtefactStore(HomeScoped):
    """Model artefacts (``<home>/<source>/artefacts/``: manifests, ``.npz``, report plots) and the alias pointers
    (``<home>/<source>/aliases/*.json``, replaced atomically)."""

    @property
    def artefacts(self) -> Path:
        """``<home>/<source>/artefacts`` (created)."""
        return self.layout.ensure().artefacts

    @property
    def models(self) -> Path:
        """``<home>/<source>/artefacts/models`` (manifests and model files, content-addressed; created)."""
        path = self.artefacts / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def reports(self) -> Path:
        """``<home>/<source>/artefacts/reports`` (not created)."""
        return self.artefacts / "reports"

    @property
    def aliases(self) -> Path:
        """``<home>/<source>/aliases`` (created)."""
        return self.layout.ensure().aliases

    def read_alias(self, alias: str = registry.CHAMPION) -> dict | None:
        """The alias pointer (``version``, ``path``, ``sha256``, ...) or None (see :func:`registry.read_alias`)."""
        return registry.read_alias(self.aliases, alias)


class PromotionPolicy(ConfigurableResource):
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


POLICY_FIELDS: tuple[str, ...] = tuple(PromotionPolicy.model_fields)


class ModelPolicy(PromotionPolicy):
    """How models are trained and promoted: the promotion thresholds (:class:`PromotionPolicy`'s fields) and
    the lengths of the training window and of the ranker's purchase history.

    ``window_days`` / ``history_days`` None = the source's setting (``settings.window_days(source)`` /
    ``settings.history_days(source)``: ``FACTORY_WINDOW_DAYS`` / ``FACTORY_HISTORY_DAYS`` or the source's
    default), resolved when a run uses the resource (the source is the other resources').
    """

    window_days: int | None = Field(
        default=None, description="rolling training window, days (> holdout + 7); default: the source's setting at run time"
    )
    history_days: int | None = Field(
        default=None, ge=0, le=settings.MAX_DAYS,
        description="ranker purchase history before each fit's as-of day, days (0 = off); default: the source's setting",
    )

    def resolved_window_days(self, source: str | None = None) -> int:
        """Window length in days (``source``: whose default applies; None = ``FACTORY_SOURCE``).

        Raises:
            SettingsError: a configured window of at most ``HOLDOUT_DAYS + 7`` or more than ``MAX_DAYS`` days
                (or an invalid ``FACTORY_WINDOW_DAYS``).
        """
        if self.window_days is None:
            return settings.window_days(source)
        if not settings.HOLDOUT_DAYS + 7 < self.window_days <= settings.MAX_DAYS:
            raise settings.SettingsError(
                f"window_days={self.window_days}: must be in {settings.HOLDOUT_DAYS + 8}..{settings.MAX_DAYS}")
        return self.window_days

    def resolved_history_days(self, source: str | None = None) -> int:
        """Purchase-history length in days (raises ``SettingsError`` for an invalid ``FACTORY_HISTORY_DAYS``)."""
        return self.history_days if self.history_days is not None else settings.history_days(source)

    def promotion(self) -> dict:
        """The promotion thresholds only (recorded in each decision record as ``policy``)."""
        return {name: getattr(self, name) for name in POLICY_FIELDS}


def ml_resources(home: str | None = None, source: str | None = None, registry_url: str | None = None,
                 storage: str | None = None, **policy) -> dict:
    """Default instances of every MLOps resource key (``feature_store``, ``registry``, ``artefacts``,
    ``model_policy``), scoped to ``home`` / ``source`` (None = the environment at run time); ``storage``: the
    warehouse storage the feature store reads (None = what the home holds)."""
    from factory_assets.feature_store.resource import FeatureStoreResource

    return {
        "feature_store": FeatureStoreResource(home=home, source=source, storage=storage),
        "registry": RegistryResource(home=home, source=source, url=registry_url),
        "artefacts": ArtefactStore(home=home, source=source),
        "model_policy": ModelPolicy(**policy),
    }
