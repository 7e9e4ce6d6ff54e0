"""``training_window`` (the rolling window's inputs, checked complete) and ``candidate_model`` (train, gate).

Resources: ``feature_store`` (:class:`~factory_assets.feature_store.resource.FeatureStoreResource`: the
features and their ledger, read only), ``registry`` (the model registry's store: versions, decisions and the
``training_windows`` manifests), ``artefacts`` and ``model_policy`` (:mod:`factory_assets.ml.resources`).
The window length the step reads is ``model_policy``'s, resolved at run time (the partition mapping of the
dependency is the code's default window).
"""


from dataclasses import replace
from datetime import date

from dagster import (
    AssetCheckResult,
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

from factory_assets.ml import promotion
from factory_assets.platform import settings
from factory_assets.platform.partitions import (
    DAILY,
    GROUP_MODELS,
    HOLDOUT_DAYS,
    ROLLING_WINDOW,
    ONE_RUN_PER_PARTITION,
    WAREHOUSE_POOL,
    partition_day,
)
from factory_assets.feature_store.contract import regime_start
from factory_assets.feature_store import retrieval, store
from factory_assets.ml.recsys.artefact import (
    ArtefactIntegrityError,
    atomic_write_bytes,
    load_manifest_model,
    load_model,
    read_manifest,
    save_model,
    write_manifest,
)
from factory_assets.ml.recsys.evaluation import evaluate, model_scores
from factory_assets.ml.recsys.model import ModelParams
from factory_assets.ml import registry as model_registry
from factory_assets.ml.recsys.report import ndcg_by_segment_png
from factory_assets.ml.reports import decision_markdown, evaluation_report_markdown
from factory_assets.feature_store.resource import FeatureStoreResource
from factory_assets.ml.erasure import mark_trained_on_erased_data
from factory_assets.ml.resources import ArtefactStore, ModelPolicy, RegistryResource
from factory_assets.ml.training import train_candidate

TRAINING_WINDOW = "training_window"
CANDIDATE_MODEL = "candidate_model"
WINDOW_COMPLETE = "window_complete"
MODEL_CODE_VERSION = "2"  # 2: the ranker's long purchase-history features


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
    day = partition_day(context)
    window_days = model_policy.resolved_window_days(feature_store.source_name)
    with feature_store.connect() as con:
        manifest = store.window_manifest(con, day, window_days)
    with registry.connect() as reg:
        model_registry.save_window_manifest(reg, day, manifest)
    missing = {view: days for view, days in manifest["missing"].items() if days}
    return MaterializeResult(
        data_version=DataVersion(manifest["window_version"]),
        check_results=[
            AssetCheckResult(
                check_name=WINDOW_COMPLETE,
                passed=manifest["complete"],
                description="complete" if manifest["complete"] else f"missing feature partitions: {missing}",
                metadata={"missing": MetadataValue.json(missing)},
            )
        ],
        metadata={
            "window": f"{manifest['start']}..{manifest['end']}",
            "input_partitions": len(manifest["inputs"]),
            "interaction_rows": sum(i["row_count"] for i in manifest["inputs"] if i["asset"] == store.USER_ITEM_DAILY),
            "window_version": manifest["window_version"],
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


def _ranker_manifest(model) -> dict | None:
    """What the manifest says of a ranker model: kind, features and the sha256 of its ranker arrays (in the npz)."""
    if model.ranker is None:
        return None
    import hashlib

    from factory_assets.ml.recsys.artefact import npz_bytes, ranker_arrays
    from factory_assets.ml.recsys.ranker import FEATURES, LinearRanker

    arrays = ranker_arrays(model.ranker)
    return {
        "kind": "logistic_regression" if isinstance(model.ranker.linear, LinearRanker) else "gradient_boosted_trees",
        "features": list(FEATURES),
        "n_candidates": model.ranker.n_candidates,
        "arrays": sorted(arrays),
        "arrays_sha256": hashlib.sha256(npz_bytes(arrays)).hexdigest(),
    }


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
        return ModelParams(**self.model_dump(exclude={"drift_reweighting", "history_days"}), history_days=days)


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
    day = partition_day(context)
    source = feature_store.source_name
    policy = model_policy
    with feature_store.connect() as con, registry.connect() as reg:
        # an erasure since the last run (the erasure_watch sensor may not have ticked yet)
        if marked := mark_trained_on_erased_data(reg, con):
            context.log.warning(f"trained on data since erased: v{', v'.join(map(str, marked))}")
        champion = model_registry.read_alias(artefacts.aliases)
        champion_tainted = champion is not None and model_registry.has_event(reg, champion["version"], model_registry.ERASED_DATA)
        window = model_registry.load_window_manifest(reg, day)
    if window is None or not window["complete"]:
        raise Failure(
            description=f"training_window {day} is missing or incomplete; materialise the window's features first",
            allow_retries=False,
        )
    with feature_store.connect() as con:
        start, end = (date.fromisoformat(window[k]) for k in ("start", "end"))
        frame = store.read_window(con, start, end)
        feature_versions = {
            view: retrieval.feature_view_version(con, view, start, end) for view in (store.USER_ITEM_DAILY, store.ITEM_DAILY)
        }
        regime = regime_start(con, start, end) if config.drift_reweighting else None
        params = replace(config.params(source, model_policy.resolved_history_days(source)), regime_start=None if regime is None else regime.isoformat(),
                         use_gpu=settings.als_gpu())
        history, history_manifest = None, None
        if params.model_kind == "ranker" and params.history_days > 0:
            # every fit reads history_days before its own as-of day: the earliest as-of is after the window's start
            history, history_manifest = retrieval.purchase_history(con, end, params.history_days + (end - start).days)
            present = len(history_manifest["inputs"])
            (context.log.warning if history_manifest["missing"] else context.log.info)(
                f"purchase history: {present} of {history_manifest['days']} days present, {len(history)} converting rows"
                + (f"; missing {history_manifest['missing'][0]}..{history_manifest['missing'][-1]} (ingest them "
                   "to give the fits their full history)" if history_manifest["missing"] else ""))
    if regime is not None:
        context.log.info(f"behaviour drift since {regime}: the days before it are down-weighted in the fits")
    result = train_candidate(frame, (start, end), HOLDOUT_DAYS, params, history=history)
    del history

    champion_report, champion_skip = None, None
    backtest = champion is not None and date.fromisoformat(str(champion["partition_day"])) > day
    if champion is not None:
        try:
            champion_trained_on = read_manifest(champion["path"], champion["sha256"])["artefacts"]["eval"]["trained_on"]
            champion_skip = promotion.champion_not_comparable(
                champion["version"], date.fromisoformat(str(champion["partition_day"])), day,
                tuple(date.fromisoformat(d) for d in champion_trained_on), result.split.test_days)
            if champion_skip is None:
                champion_eval = load_manifest_model(champion["path"], "eval", champion["sha256"])
                champion_report = evaluate(model_scores(champion_eval, result.eval_set), result.eval_set)
        except (ArtefactIntegrityError, FileNotFoundError, KeyError) as exc:
            context.log.error(f"champion v{champion['version']} cannot be verified and is not compared: {exc}")
    if champion_skip:
        context.log.info(f"champion gate: {champion_skip}")

    models_dir = artefacts.models
    eval_path, eval_sha = save_model(result.eval_model, models_dir)
    served_path, served_sha = save_model(result.served_model, models_dir)
    evaluation = result.evaluation()
    manifest = {
        "format": "factory_assets.manifest/1",
        "source": source,
        "partition": day.isoformat(),
        "code_version": MODEL_CODE_VERSION,
        "params": result.served_model.params.as_dict(),
        "window": {k: window[k] for k in ("start", "end", "days", "window_version", "inputs")},
        "feature_versions": feature_versions,
        "history": history_manifest,  # the long purchase history's partitions (None: not read)
        "holdout_days": HOLDOUT_DAYS,
        "tuning_trace": result.tuning.trace,
        "ranker": _ranker_manifest(result.served_model),
        "artefacts": {
            "eval": {"file": eval_path.name, "sha256": eval_sha, "bytes": eval_path.stat().st_size,
                     "trained_on": evaluation["model"]["train_days"]},
            "served": {"file": served_path.name, "sha256": served_sha, "bytes": served_path.stat().st_size,
                       "trained_on": [window["start"], window["end"]]},
        },
        "evaluation": evaluation,
    }
    manifest_path, manifest_sha = write_manifest(manifest, models_dir)
    plot = ndcg_by_segment_png(evaluation["segments"])  # named by the manifest it illustrates
    plot_path = artefacts.reports / f"{manifest_sha}.png"
    atomic_write_bytes(plot_path, plot)

    served = load_model(served_path, served_sha)  # the gate judges the bytes that will be served
    gates = [
        promotion.beats_baseline(
            result.model_report.ndcg, {n: r.ndcg for n, r in result.baselines.items()}, policy.baseline_margin
        ),
        promotion.not_worse_than_champion(
            result.model_report.per_user_ndcg,
            None if champion_report is None else champion_report.per_user_ndcg,
            policy.champion_tolerance,
            None if champion is None else champion["version"],
            "it was trained on data since erased" if champion_tainted else None,
            confidence=policy.confidence,
            n_resamples=policy.bootstrap_resamples,
            not_compared=champion_skip,
        ),
        promotion.safe_to_serve(
            served, served_path, set(frame["user_id"]), set(frame["item_id"]),
            max_artefact_mb=policy.max_artefact_mb, max_recommend_ms=policy.max_recommend_ms,
            sample_users=policy.sample_users,
        ),
    ]
    verdict, reason = promotion.decide(gates, backtest_of=champion["version"] if backtest else None)
    status = {promotion.PROMOTE: "candidate", promotion.SHADOW: "shadow", promotion.REJECT: "rejected",
              promotion.BACKTEST: "backtest"}[verdict]
    record = {
        "verdict": verdict,
        "evaluation": evaluation,
        "champion": None if champion_report is None else {"version": champion["version"], **champion_report.as_dict()},
        "champion_compared": champion_report is not None,
        "champion_not_compared": champion_skip,  # why the champion gate did not compare (leakage, backtest)
        "gates": [{"name": g.name, "passed": g.passed, "reason": g.reason, "metadata": g.metadata} for g in gates],
        "policy": policy.promotion(),
    }
    markdown = decision_markdown(day, verdict, reason, evaluation, record["champion"], gates, policy.promotion())
    with registry.connect() as reg:
        version = model_registry.register(reg, day, manifest_path, manifest_sha, status, reason, record)
        model_registry.record_decision(reg, version, day, verdict, reason, record, markdown)
        registry_status = model_registry.version_row(reg, version)["status"]  # a re-run keeps a champion's/retired status
        if verdict == promotion.SHADOW:
            model_registry.designate_shadow(reg, artefacts.aliases, version, reason)
    context.log.info(f"candidate v{version} ({day}): {verdict}; {reason}")
    return MaterializeResult(
        data_version=DataVersion(manifest_sha),
        check_results=[
            AssetCheckResult(check_name=g.name, passed=g.passed, description=g.reason,
                             metadata={k: v for k, v in g.metadata.items() if v is not None})
            for g in gates
        ],
        metadata={
            "version": version,
            "registry_status": registry_status,
            "manifest_path": MetadataValue.path(str(manifest_path)),
            "manifest_sha256": manifest_sha,
            "ndcg_at_10": evaluation["model"]["ndcg_at_10"],
            "n_eval_users": evaluation["model"]["n_users"],
            "als_weight": result.eval_model.als_weight,
            "regime_start": params.regime_start or "none (no drift in the window)",
            "verdict": verdict,
            "reason": reason,
            "promotion_decision": MetadataValue.md(markdown),
            **{key: _float_or_null(evaluation["model"][key]) for key in REPORT_METADATA},
            "evaluation_report": MetadataValue.md(evaluation_report_markdown(evaluation, plot)),
            "evaluation_plot": MetadataValue.md(f"![NDCG@10 by activity segment]({_png_data_uri(plot)})"),
            "evaluation_plot_path": MetadataValue.path(str(plot_path)),
            "activity_segments": MetadataValue.json(evaluation["segments"]),
        },
    )
