"""``training_window`` (the rolling window's inputs, checked complete) and ``candidate_model`` (train, gate).

Resources: ``feature_store`` (:class:`~factory_assets.feature_store.resource.FeatureStoreResource`: the
features and their ledger, read only), ``registry`` (the model registry's store: versions, decisions and the
``training_windows`` manifests), ``artefacts`` and ``model_policy`` (:mod:`factory_assets.ml.resources`).
The window length the step reads is ``model_policy``'s, resolved at run time (the partition mapping of the
dependency is the code's default window).

Wiring only: the work is :func:`factory_assets.ml.candidate_day.save_window` and
:func:`~factory_assets.ml.candidate_day.train_day`; each asset maps what it returns to its result
(:class:`~factory_assets.ml.candidate_day.WindowMissing` to a non-retryable ``Failure``).
"""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetDep,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from factory_assets.feature_store import store
from factory_assets.feature_store.resource import FeatureStoreResource
from factory_assets.ml import promotion
from factory_assets.ml.candidate_day import MODEL_CODE_VERSION, WindowMissing, save_window, train_day
from factory_assets.ml.recsys.model import ModelParams
from factory_assets.ml.resources import ArtefactStore, ModelPolicy, RegistryResource
from factory_assets.platform import settings
from factory_assets.platform.partitions import (
    DAILY,
    GROUP_MODELS,
    ROLLING_WINDOW,
    ONE_RUN_PER_PARTITION,
    WAREHOUSE_POOL,
    partition_day,
)

TRAINING_WINDOW = "training_window"
CANDIDATE_MODEL = "candidate_model"
WINDOW_COMPLETE = "window_complete"


@asset(
    name=TRAINING_WINDOW,
    partitions_def=DAILY,
    deps=[
        AssetDep(store.USER_ITEM_DAILY, partition_mapping=ROLLING_WINDOW),
        AssetDep(store.ITEM_DAILY, partition_mapping=ROLLING_WINDOW),
    ],
    group_name=GROUP_MODELS,
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
    backfill_policy=ONE_RUN_PER_PARTITION,
    code_version="1",
    check_specs=[
        AssetCheckSpec(
            WINDOW_COMPLETE,
            asset=TRAINING_WINDOW,
            blocking=True,
            description="all feature partitions of the window (model_policy.window_days) exist (an empty day counts, "
            "a missing one blocks)",
        )
    ],
    description="The feature partitions of the rolling window (model_policy.window_days) ending on the partition's "
    "day, with their data versions (the manifest is kept in the model registry's store).",
)
def training_window(context: AssetExecutionContext, feature_store: FeatureStoreResource,
                    registry: RegistryResource, model_policy: ModelPolicy) -> MaterializeResult:
    window = save_window(feature_store.connect, registry.connect, partition_day(context),
                         model_policy.resolved_window_days(feature_store.source_name))
    return MaterializeResult(
        data_version=DataVersion(window.window_version),
        check_results=[
            AssetCheckResult(
                check_name=WINDOW_COMPLETE,
                passed=window.complete,
                description=window.description,
                metadata={"missing": MetadataValue.json(window.missing)},
            )
        ],
        metadata={
            "window": window.window,
            "input_partitions": window.input_partitions,
            "interaction_rows": window.interaction_rows,
            "window_version": window.window_version,
        },
    )


_DEFAULTS = ModelParams()
# evaluation["model"] entries (recsys.report, training.CandidateResult.evaluation) shown as numeric metadata
REPORT_METADATA = ("gini_at_10", "repeat_share_at_10", "new_share_at_10", "repeat_hit_share_at_10", "cold_start_share")


def _png_data_uri(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _float_or_null(value: float | None) -> MetadataValue:
    return MetadataValue.null() if value is None else MetadataValue.float(float(value))


class CandidateConfig(Config):
    """Hyper-parameters of the candidate (run config); defaults are ``ModelParams``'s."""

    factors: int = Field(default=_DEFAULTS.factors, description="ALS latent factors")
    regularization: float = Field(default=_DEFAULTS.regularization, description="ALS L2 regularisation")
    alpha: float = Field(default=_DEFAULTS.alpha, description="ALS confidence scale")
    iterations: int = Field(default=_DEFAULTS.iterations, description="ALS sweeps")
    seed: int = Field(default=_DEFAULTS.seed, description="ALS random_state (an int: fits are reproducible)")
    half_life_days: float = Field(default=_DEFAULTS.half_life_days, description="recency half-life of interactions, days")
    popularity_weight: float = Field(default=_DEFAULTS.popularity_weight, description="weight of the popularity term")
    als_weight: float | None = Field(default=None, description="fixed ALS weight; None = tune on the train days")
    model_kind: str = Field(default=_DEFAULTS.model_kind,
                            description='"blend" (history + popularity + ALS formula) or "ranker" (learned ranker over candidates)')
    n_candidates: int = Field(default=_DEFAULTS.n_candidates, description="ranker: candidates per source and user")
    ranker_c: float | None = Field(default=None, description="ranker: fixed logistic-regression C; None = search")
    search_budget: int = Field(default=_DEFAULTS.search_budget, description="ranker: ALS configurations tried on the validation days")
    ranker_kind: str = Field(default=_DEFAULTS.ranker_kind, description='ranker: "linear" or "trees"')
    drift_reweighting: bool = Field(default=True, description="down-weight the days before the drift monitor's change point")
    warm_start: bool = Field(default=True, description="ranker: re-use the champion's searched parameters unless drift, a "
                             "code or parameter change, or a 7-day-old search asks for a full search (manifest: search)")
    regime_decay: float = Field(default=_DEFAULTS.regime_decay,
                                description="drift re-weighting: days before the change point weigh decay ** (new days)")
    regime_floor: float = Field(default=_DEFAULTS.regime_floor, description="drift re-weighting: their smallest weight")
    history_days: int | None = Field(
        default=None, ge=0, le=settings.MAX_DAYS,
        description="ranker: days of purchase history before each fit's as-of day (0 = off); None = the source's "
                    "setting (FACTORY_HISTORY_DAYS; Online Retail 90, others 0)")

    def params(self, source: str | None = None, default_history_days: int | None = None) -> ModelParams:
        """The ``ModelParams``; ``history_days`` None becomes ``default_history_days`` (``model_policy``'s), or when
        that is None too ``settings.history_days(source)``."""
        days = self.history_days if self.history_days is not None else (
            default_history_days if default_history_days is not None else settings.history_days(source))
        return ModelParams(**self.model_dump(exclude={"drift_reweighting", "warm_start", "history_days"}), history_days=days)


@asset(
    name=CANDIDATE_MODEL,
    partitions_def=DAILY,
    deps=[TRAINING_WINDOW],
    group_name=GROUP_MODELS,
    kinds={"python", "implicit"},
    pool=WAREHOUSE_POOL,
    backfill_policy=ONE_RUN_PER_PARTITION,
    code_version=MODEL_CODE_VERSION,
    check_specs=[
        AssetCheckSpec(promotion.BEATS_BASELINE, asset=CANDIDATE_MODEL, blocking=True,
                       description="NDCG@10 above the best of popularity and repeat-purchase by the policy's margin"),
        AssetCheckSpec(promotion.NOT_WORSE_THAN_CHAMPION, asset=CANDIDATE_MODEL, blocking=True,
                       description="NDCG@10 not below the champion's on the same held-out users and days"),
        AssetCheckSpec(promotion.SAFE_TO_SERVE, asset=CANDIDATE_MODEL, blocking=True,
                       description="finite factors, known ids, full top-10s, size and latency within budget"),
    ],
    description="The day's candidate model (default: the learned ranker over ALS, co-purchase, popularity and history "
    "candidates; or the blend), tuned and trained on the window's first days, scored on its last days against the "
    "baselines and the champion (blocking gates), then refit on the whole window. A candidate older than the "
    "champion's day is a backtest: evaluated and recorded, never promoted.",
)
def candidate_model(
    context: AssetExecutionContext, config: CandidateConfig, feature_store: FeatureStoreResource,
    registry: RegistryResource, artefacts: ArtefactStore, model_policy: ModelPolicy,
) -> MaterializeResult:
    source = feature_store.source_name
    try:
        out = train_day(
            feature_store.connect, registry.connect, artefacts, partition_day(context), source,
            config.params(source, model_policy.resolved_history_days(source)), model_policy.promotion(),
            drift_reweighting=config.drift_reweighting, warm_start=config.warm_start, log=context.log,
        )
    except WindowMissing as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    model = out.evaluation["model"]
    return MaterializeResult(
        data_version=DataVersion(out.manifest_sha256),
        check_results=[
            AssetCheckResult(check_name=c.name, passed=c.passed, severity=AssetCheckSeverity(c.severity),
                             description=c.description, metadata=c.metadata)
            for c in out.checks
        ],
        metadata={
            "version": out.version,
            "registry_status": out.registry_status,
            "manifest_path": MetadataValue.path(str(out.manifest_path)),
            "manifest_sha256": out.manifest_sha256,
            "ndcg_at_10": model["ndcg_at_10"],
            "n_eval_users": model["n_users"],
            "als_weight": out.als_weight,
            "regime_start": out.regime_start or "none (no drift in the window)",
            "verdict": out.verdict,
            "reason": out.reason,
            "promotion_decision": MetadataValue.md(out.decision_markdown),
            **{key: _float_or_null(model[key]) for key in REPORT_METADATA},
            "evaluation_report": MetadataValue.md(out.evaluation_report),
            "evaluation_plot": MetadataValue.md(f"![NDCG@10 by activity segment]({_png_data_uri(out.plot)})"),
            "evaluation_plot_path": MetadataValue.path(str(out.plot_path)),
            "activity_segments": MetadataValue.json(out.evaluation["segments"]),
            "stage_seconds": MetadataValue.json(out.seconds),
            "search": MetadataValue.json(out.search),
        },
    )
