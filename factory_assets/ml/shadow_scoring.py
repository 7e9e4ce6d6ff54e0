"""Champion vs shadow on one day's served traffic, without Dagster (the ``shadow_evaluation`` asset's work).

:func:`evaluate_day` reads the served-recommendation log of UTC day D (:mod:`factory_assets.ml.served_log`) and
the purchases of D from the feature store (:func:`day_purchases`), scores every ``(champion_version,
shadow_version)`` pair the log holds (:func:`score_rows`), replaces D's rows of :data:`SHADOW_SCORES` in the
model registry's store, and applies the promotion rule (:func:`factory_assets.ml.served_log.shadow_verdict`):
it only *requests* a promotion (the ``shadow_promoter`` sensor launches the run that moves the alias).  It
returns a :class:`ShadowDay` that :mod:`factory_assets.ml.defs.shadow` maps to the asset's metadata; a
:class:`ShadowEvaluationError` is a failure not worth retrying.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import duckdb
import pandas as pd

from factory_assets.feature_store import contract
from factory_assets.feature_store.store import USER_ITEM_DAILY
from factory_assets.ml import registry as model_registry
from factory_assets.ml import served_log as serving_log
from factory_assets.ml.recsys.artefact import ArtefactIntegrityError, load_manifest_model
from factory_assets.platform.settings import HomeLayout

SHADOW_SCORES = model_registry.SHADOW_SCORES  # a table of the model registry's store
SCORE_COLUMNS = model_registry.SCORE_COLUMNS
HISTORY_ROWS = 14  # rows of SHADOW_SCORES in the history table

logger = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[Any]]


class ShadowEvaluationError(Exception):
    """The day cannot be evaluated as things stand (not retryable)."""


class PurchasesUnknown(ShadowEvaluationError):
    """The day has a served log but its purchases (``user_item_daily``) are not materialised."""


class ShadowUnverifiable(ShadowEvaluationError):
    """The shadow proved better but its manifest or served artefact does not match its digest."""


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


@dataclass(frozen=True)
class ShadowDay:
    """What :func:`evaluate_day` scored and decided."""

    rows: list[dict]  # the day's SHADOW_SCORES rows
    main: dict  # the row shown: the current (champion, shadow) pair's, else the one with most requests
    verdict: str
    promotion_requested: bool  # the shadow_promoter sensor launches the served_model run
    promote_version: int | None
    promote_from_version: int | None
    promotion_reason: str
    promotion_evidence: dict
    log_files: int  # served-log files read
    log_problems: list[str]  # unreadable log files, skipped
    history_markdown: str  # the last HISTORY_ROWS rows of SHADOW_SCORES, then the verdict
    data_version: str  # of the rows, their scoring time left out
    pairs_scored: int  # rows with at least one paired request


def evaluate_day(connect_features: Connect, connect_registry: Connect, layout: HomeLayout, day: date,
                 min_days: int, min_lift: float, min_requests: int, *, log: Any = None) -> ShadowDay:
    """Score the champion and the shadow on ``day``'s served traffic, record the scores, and decide whether the
    current shadow has proved better (the rule's thresholds: ``min_days``, ``min_lift``, ``min_requests``).

    Args:
        connect_features: opens a (read-only) feature store connection; connect_registry: a registry connection.
        layout: the home namespace (served log under its root, the alias pointers), ensured.
        log: a ``logging.Logger``-like object (``info``, ``warning``; default: this module's logger).

    Raises:
        PurchasesUnknown: the day has a served log but no ``user_item_daily`` partition.
        ShadowUnverifiable: the shadow to promote fails its digests.
    """
    log = log or logger
    problems: list[serving_log.LogProblem] = []
    served = serving_log.read_log(serving_log.log_directory(layout.root), day, problems)
    champion = model_registry.read_alias(layout.aliases)
    shadow = model_registry.read_alias(layout.aliases, model_registry.SHADOW)
    champion_v = None if champion is None else int(champion["version"])
    shadow_v = None if shadow is None else int(shadow["version"])
    requested, evidence, promotion_reason = False, {}, ""
    with connect_features() as con:
        if not served.empty and contract.ledger(con, USER_ITEM_DAILY, day, day).empty:
            raise PurchasesUnknown(
                f"{USER_ITEM_DAILY} {day} is not materialised (nor, perhaps, raw_events): the day's "
                "purchases are unknown, so its served log cannot be scored yet"
            )
        purchases = day_purchases(con, day)
    rows = score_rows(day, served, purchases, champion_v, shadow_v)
    with connect_registry() as reg:
        model_registry.replace_shadow_scores(reg, day, rows)
        table = model_registry.shadow_scores(reg, day)
    history = table.tail(HISTORY_ROWS)

    if shadow_v is None:
        verdict_text = "no shadow designated: nothing to promote"
    elif champion_v is None:
        verdict_text = f"no champion to compare shadow v{shadow_v} with: nothing to promote"
    else:
        verdict = serving_log.shadow_verdict(table, champion_v, shadow_v, day, min_days, min_lift, min_requests)
        verdict_text = verdict.reason
        if verdict.promote:
            with connect_registry() as reg:
                row = model_registry.version_row(reg, shadow_v)
                tainted = model_registry.has_event(reg, shadow_v, model_registry.ERASED_DATA)
            if row["status"] != model_registry.SHADOW or tainted:
                verdict_text = f"not promoted: v{shadow_v} is {row['status']} ({row['reason']}); {verdict.reason}"
                log.warning(verdict_text)
            else:
                try:
                    load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
                except (ArtefactIntegrityError, FileNotFoundError) as exc:
                    raise ShadowUnverifiable(f"shadow v{shadow_v} proved better but failed verification: {exc}") from exc
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
                log.info(verdict_text)

    main = max(rows, key=lambda r: (r["shadow_version"] == shadow_v and r["champion_version"] == champion_v, r["n_requests"]))
    return ShadowDay(
        rows=rows,
        main=main,
        verdict=verdict_text,
        promotion_requested=requested,
        promote_version=shadow_v if requested else None,
        promote_from_version=champion_v if requested else None,
        promotion_reason=promotion_reason,
        promotion_evidence=evidence,
        log_files=len(served.attrs.get("files", [])),
        log_problems=[str(p) for p in problems],
        history_markdown=history_markdown(history, verdict_text),
        data_version=_rows_version(rows),
        pairs_scored=sum(1 for r in rows if r["n_requests"] > 0),
    )
