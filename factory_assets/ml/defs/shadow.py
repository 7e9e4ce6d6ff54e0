"""``shadow_evaluation``: score the champion and the shadow on the day's served traffic; promote a proven shadow.

Partition D reads the served-recommendation log of UTC day D (``<home>/<source>/served_log/``, schema and
attribution rule in :mod:`factory_assets.ml.served_log`) and the purchases of D from the feature store
(:func:`day_purchases`: ``user_item_daily.last_purchase_ts`` of D), scores every
``(champion_version, shadow_version)`` pair the log holds on the requests logged for both roles, and replaces
D's rows in the table :data:`SHADOW_SCORES` (in the model registry's store, reached through the ``registry``
resource: :func:`factory_assets.ml.registry.replace_shadow_scores`; the warehouse is only read).

Promotion rule (:class:`ShadowConfig`, :func:`factory_assets.ml.served_log.shadow_verdict`): the *current*
shadow (the ``shadow`` alias) is promoted to champion when its pair with the *current* champion was scored
on at least ``min_days`` days up to and including D (days with at least ``min_requests`` paired requests)
and its NDCG@10 beat the champion's by more than ``min_lift`` on each of the last ``min_days`` of them.
Otherwise the verdict is "keep collecting".  Before promoting, the shadow's registry status must still be
``shadow`` (not rejected, retired or trained on erased data) and its manifest and served artefact must
match their digests.  The asset does not move the alias itself: it records ``promotion_requested`` (and the
version and evidence) in its metadata, and the ``shadow_promoter`` sensor launches the ``served_model`` run
(``action=shadow_promotion``) that does.  Days with no shadow, no log or no paired request materialise with ``n_requests`` 0 and a
note saying which; unreadable log files are skipped and listed in the metadata.

Wiring only: the work is :func:`factory_assets.ml.shadow_scoring.evaluate_day` (and its helpers,
re-exported here); the asset maps its :class:`~factory_assets.ml.shadow_scoring.ShadowDay` to metadata and a
:class:`~factory_assets.ml.shadow_scoring.ShadowEvaluationError` to a non-retryable ``Failure``.
"""

from dagster import AssetExecutionContext, Config, DataVersion, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from factory_assets.feature_store.resource import FeatureStoreResource
from factory_assets.feature_store.store import USER_ITEM_DAILY
from factory_assets.ml.resources import ArtefactStore, RegistryResource
from factory_assets.ml.shadow_scoring import (
    HISTORY_ROWS,
    SCORE_COLUMNS,
    SHADOW_SCORES,
    ShadowEvaluationError,
    day_purchases,
    evaluate_day,
    history_markdown,
    score_rows,
)
from factory_assets.platform.partitions import DAILY, GROUP_SERVING, ONE_RUN_PER_PARTITION, WAREHOUSE_POOL, partition_day

SHADOW_EVALUATION = "shadow_evaluation"

__all__ = [  # the scoring helpers are re-exported from factory_assets.ml.shadow_scoring
    "HISTORY_ROWS", "SCORE_COLUMNS", "SHADOW_EVALUATION", "SHADOW_SCORES", "ShadowConfig", "day_purchases",
    "history_markdown", "score_rows", "shadow_evaluation",
]


class ShadowConfig(Config):
    """When a shadow has proved better than the champion on logged traffic (run config of the asset)."""

    min_days: int = Field(default=3, ge=1, description="scored days of the same (champion, shadow) pair needed")
    min_lift: float = Field(
        default=0.0, description="shadow NDCG@10 minus champion NDCG@10 must exceed this on each of the last min_days days"
    )
    min_requests: int = Field(
        default=1, ge=1, description="a day counts as scored only with at least this many requests logged for both roles"
    )


@asset(
    name=SHADOW_EVALUATION,
    partitions_def=DAILY,
    deps=[USER_ITEM_DAILY],
    group_name=GROUP_SERVING,
    kinds={"duckdb", "parquet"},
    pool=WAREHOUSE_POOL,
    backfill_policy=ONE_RUN_PER_PARTITION,
    code_version="1",
    description="Champion vs shadow on the day's served-recommendation log, joined with the day's later purchases "
    "(table shadow_scores, in the model registry's store); once the shadow has beaten the champion on enough logged days it requests its "
    "promotion (the shadow_promoter sensor launches the served_model run).",
)
def shadow_evaluation(context: AssetExecutionContext, config: ShadowConfig, feature_store: FeatureStoreResource,
                      registry: RegistryResource, artefacts: ArtefactStore) -> MaterializeResult:
    try:
        out = evaluate_day(feature_store.connect, registry.connect, artefacts.layout.ensure(), partition_day(context),
                           config.min_days, config.min_lift, config.min_requests, log=context.log)
    except ShadowEvaluationError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    main = out.main
    number = lambda v: MetadataValue.float(float(v)) if v is not None else MetadataValue.null()  # noqa: E731
    version = lambda v: MetadataValue.int(int(v)) if v is not None else MetadataValue.null()  # noqa: E731
    return MaterializeResult(
        data_version=DataVersion(out.data_version),
        metadata={
            "n_requests": int(main["n_requests"]),
            "champion_version": version(main["champion_version"]),
            "shadow_version": version(main["shadow_version"]),
            "champion_ndcg_at_10": number(main["champion_ndcg_at_10"]),
            "shadow_ndcg_at_10": number(main["shadow_ndcg_at_10"]),
            "champion_hit_rate_at_10": number(main["champion_hit_rate_at_10"]),
            "shadow_hit_rate_at_10": number(main["shadow_hit_rate_at_10"]),
            "ndcg_lift": number(main["ndcg_lift"]),
            "note": main["note"],
            "pairs_scored": out.pairs_scored,
            "promotion_requested": out.promotion_requested,  # the shadow_promoter sensor launches the served_model run
            "promote_version": version(out.promote_version),
            "promote_from_version": version(out.promote_from_version),
            "promotion_reason": out.promotion_reason,
            "promotion_evidence": MetadataValue.json(out.promotion_evidence),
            "verdict": out.verdict,
            "log_files": out.log_files,
            "log_problems": MetadataValue.json(out.log_problems),
            "history": MetadataValue.md(out.history_markdown),
        },
    )
