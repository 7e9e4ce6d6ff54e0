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
"""

import hashlib
import json
from datetime import date, datetime, timezone

import duckdb
import pandas as pd
from dagster import AssetExecutionContext, Config, DataVersion, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from factory_assets.feature_store import contract
from factory_assets.feature_store.resource import FeatureStoreResource
from factory_assets.feature_store.store import USER_ITEM_DAILY
from factory_assets.ml import served_log as serving_log
from factory_assets.platform.partitions import DAILY, GROUP_SERVING, ONE_RUN_PER_PARTITION, WAREHOUSE_POOL, partition_day
from factory_assets.ml.recsys.artefact import ArtefactIntegrityError, load_manifest_model
from factory_assets.ml import registry as model_registry
from factory_assets.ml.resources import ArtefactStore, RegistryResource

SHADOW_EVALUATION = "shadow_evaluation"
SHADOW_SCORES = model_registry.SHADOW_SCORES  # a table of the model registry's store
SCORE_COLUMNS = model_registry.SCORE_COLUMNS
HISTORY_ROWS = 14


class ShadowConfig(Config):
    """When a shadow has proved better than the champion on logged traffic (run config of the asset)."""

    min_days: int = Field(default=3, ge=1, description="scored days of the same (champion, shadow) pair needed")
    min_lift: float = Field(
        default=0.0, description="shadow NDCG@10 minus champion NDCG@10 must exceed this on each of the last min_days days"
    )
    min_requests: int = Field(
        default=1, ge=1, description="a day counts as scored only with at least this many requests logged for both roles"
    )


def day_purchases(con: duckdb.DuckDBPyConnection, day: date) -> pd.DataFrame:
    """The purchases of UTC ``day`` from the feature store: one row per user x item bought that day, with the
    time of the pair's last purchase (``user_item_daily.last_purchase_ts``).

    The attribution rule (:func:`factory_assets.ml.served_log.attributed_purchases`) credits a request with an
    item bought after it and before the next UTC midnight; for purchases of the request's own day that holds
    for some purchase exactly when it holds for the last one, so this gives the same credits as every
    purchase event would.

    Returns:
        ``user_id``, ``item_id`` (str), ``ts`` (``datetime64[us, UTC]``).
    """
    frame = con.execute(
        f"SELECT user_id, item_id, last_purchase_ts AS ts FROM {USER_ITEM_DAILY} "
        "WHERE day = ? AND last_purchase_ts IS NOT NULL ORDER BY user_id, item_id", [day],
    ).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    return frame


def score_rows(day: date, log: pd.DataFrame, purchases: pd.DataFrame, champion: int | None, shadow: int | None) -> list[dict]:
    """The :data:`SHADOW_SCORES` rows of one day: one per version pair in the log, or one note row.

    Args:
        log: the day's validated served log; purchases: the day's purchases (``user_id``, ``item_id``, ``ts``).
        champion, shadow: versions the aliases name now (used only for the note row of a day with no pair).
    """
    now = datetime.now(timezone.utc)
    one_role = int((log.groupby("request_id")["role"].nunique() < len(serving_log.ROLES)).sum()) if len(log) else 0
    pairs = serving_log.version_pairs(log) if len(log) else []
    if not pairs:
        if shadow is None and log.empty:
            note = "no shadow designated and no served log for this day: nothing to score"
        elif log.empty:
            note = "no served log for this day: nothing to score"
        else:
            note = f"the served log has no request logged for both roles ({one_role} single-role request(s)): nothing to score"
        return [{
            "day": day, "champion_version": champion, "shadow_version": shadow, "n_requests": 0,
            "n_excluded": one_role, "n_converting": 0, "champion_hit_rate_at_10": None, "shadow_hit_rate_at_10": None,
            "champion_ndcg_at_10": None, "shadow_ndcg_at_10": None, "ndcg_lift": None, "ndcg_lift_se": None,
            "note": note, "scored_at": now,
        }]
    rows = []
    for champion_version, shadow_version in pairs:
        score = serving_log.score_log(serving_log.requests_of_pair(log, champion_version, shadow_version), purchases)
        c, s = score.roles[serving_log.CHAMPION], score.roles[serving_log.SHADOW]
        rows.append({
            "day": day, "champion_version": champion_version, "shadow_version": shadow_version,
            "n_requests": score.n_requests, "n_excluded": one_role, "n_converting": score.n_converting,
            "champion_hit_rate_at_10": c.hit_rate_at_10, "shadow_hit_rate_at_10": s.hit_rate_at_10,
            "champion_ndcg_at_10": c.ndcg_at_10, "shadow_ndcg_at_10": s.ndcg_at_10,
            "ndcg_lift": score.ndcg_lift, "ndcg_lift_se": score.ndcg_lift_se,
            "note": f"scored {score.n_requests} paired request(s), {score.n_converting} with a purchase",
            "scored_at": now,
        })
    return rows


def _fmt(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def history_markdown(history: pd.DataFrame, verdict: str) -> str:
    """The last rows of :data:`SHADOW_SCORES` as a Markdown table, then the verdict."""
    lines = [
        "| day | champion | shadow | requests | with purchase | champion HR@10 | shadow HR@10 | champion NDCG@10 | shadow NDCG@10 | lift (± se) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in history.itertuples(index=False):
        version = lambda v: "" if v is None or pd.isna(v) else f"v{int(v)}"  # noqa: E731
        lift = _fmt(r.ndcg_lift) + (f" ± {_fmt(r.ndcg_lift_se)}" if _fmt(r.ndcg_lift_se) else "")
        lines.append(
            f"| {r.day} | {version(r.champion_version)} | {version(r.shadow_version)} | {int(r.n_requests)} | "
            f"{int(r.n_converting)} | {_fmt(r.champion_hit_rate_at_10)} | {_fmt(r.shadow_hit_rate_at_10)} | "
            f"{_fmt(r.champion_ndcg_at_10)} | {_fmt(r.shadow_ndcg_at_10)} | {lift} | {r.note} |"
        )
    return "\n".join(lines + ["", f"**Verdict:** {verdict}"])


def _rows_version(rows: list[dict]) -> str:
    stable = [{k: v for k, v in row.items() if k != "scored_at"} for row in rows]
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


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
    day = partition_day(context)
    layout = artefacts.layout.ensure()
    problems: list[serving_log.LogProblem] = []
    log = serving_log.read_log(serving_log.log_directory(layout.root), day, problems)
    champion = model_registry.read_alias(layout.aliases)
    shadow = model_registry.read_alias(layout.aliases, model_registry.SHADOW)
    champion_v = None if champion is None else int(champion["version"])
    shadow_v = None if shadow is None else int(shadow["version"])
    requested, evidence, promotion_reason = False, {}, ""
    with feature_store.connect() as con:
        if not log.empty and contract.ledger(con, USER_ITEM_DAILY, day, day).empty:
            raise Failure(
                description=f"{USER_ITEM_DAILY} {day} is not materialised (nor, perhaps, raw_events): the day's "
                "purchases are unknown, so its served log cannot be scored yet", allow_retries=False,
            )
        purchases = day_purchases(con, day)
    rows = score_rows(day, log, purchases, champion_v, shadow_v)
    with registry.connect() as reg:
        model_registry.replace_shadow_scores(reg, day, rows)
        table = model_registry.shadow_scores(reg, day)
    history = table.tail(HISTORY_ROWS)

    if shadow_v is None:
        verdict_text = "no shadow designated: nothing to promote"
    elif champion_v is None:
        verdict_text = f"no champion to compare shadow v{shadow_v} with: nothing to promote"
    else:
        verdict = serving_log.shadow_verdict(
            table, champion_v, shadow_v, day, config.min_days, config.min_lift, config.min_requests
        )
        verdict_text = verdict.reason
        if verdict.promote:
            with registry.connect() as reg:
                row = model_registry.version_row(reg, shadow_v)
                tainted = model_registry.has_event(reg, shadow_v, model_registry.ERASED_DATA)
            if row["status"] != model_registry.SHADOW or tainted:
                verdict_text = f"not promoted: v{shadow_v} is {row['status']} ({row['reason']}); {verdict.reason}"
                context.log.warning(verdict_text)
            else:
                try:
                    load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
                except (ArtefactIntegrityError, FileNotFoundError) as exc:
                    raise Failure(
                        description=f"shadow v{shadow_v} proved better but failed verification: {exc}",
                        allow_retries=False,
                    ) from exc
                current = [r for r in rows if r["shadow_version"] == shadow_v and r["champion_version"] == champion_v]
                requested = True
                promotion_reason = f"shadow on live traffic: {verdict.reason}"
                evidence = {
                    "shadow_scores": {
                        "days": [d.isoformat() for d in verdict.days],
                        "last_day": {k: current[0][k] for k in ("n_requests", "champion_ndcg_at_10", "shadow_ndcg_at_10")} if current else None,
                    },
                }
                verdict_text = f"promotion of v{shadow_v} to champion requested (was v{champion_v}): {verdict.reason}"
                context.log.info(verdict_text)

    main = max(rows, key=lambda r: (r["shadow_version"] == shadow_v and r["champion_version"] == champion_v, r["n_requests"]))
    number = lambda v: MetadataValue.float(float(v)) if v is not None else MetadataValue.null()  # noqa: E731
    version = lambda v: MetadataValue.int(int(v)) if v is not None else MetadataValue.null()  # noqa: E731
    return MaterializeResult(
        data_version=DataVersion(_rows_version(rows)),
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
            "pairs_scored": sum(1 for r in rows if r["n_requests"] > 0),
            "promotion_requested": requested,  # the shadow_promoter sensor launches the served_model run
            "promote_version": version(shadow_v if requested else None),
            "promote_from_version": version(champion_v if requested else None),
            "promotion_reason": promotion_reason,
            "promotion_evidence": MetadataValue.json(evidence),
            "verdict": verdict_text,
            "log_files": len(log.attrs.get("files", [])),
            "log_problems": MetadataValue.json([str(p) for p in problems]),
            "history": MetadataValue.md(history_markdown(history, verdict_text)),
        },
    )
