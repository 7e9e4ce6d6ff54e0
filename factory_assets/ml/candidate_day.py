"""One day of the model step, without Dagster: the training window's manifest and the day's candidate model.

:func:`save_window` (the ``training_window`` asset) reads the feature partitions of the rolling window from the
feature store's ledger and keeps the manifest in the model registry's store; :func:`train_day` (the
``candidate_model`` asset) trains a candidate on that window, judges it against the baselines and the champion
(:mod:`factory_assets.ml.promotion`), writes its artefacts and manifest, and registers it.  Both return plain
data (:class:`WindowDay`, :class:`CandidateDay`) that the wiring in :mod:`factory_assets.ml.defs.candidate` maps
to Dagster's results; :class:`WindowMissing` is the one expected failure.

Connections are passed as factories (``feature_store.connect``, ``registry.connect``: context managers), opened
only for the reads and writes that need them: nothing is held while the model trains.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from factory_assets.feature_store import retrieval, store
from factory_assets.feature_store.contract import read_item_categories, regime_start
from factory_assets.ml import promotion
from factory_assets.ml import registry as model_registry
from factory_assets.ml.erasure import mark_trained_on_erased_data
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
from factory_assets.ml.recsys.report import ndcg_by_segment_png
from factory_assets.ml.reports import decision_markdown, evaluation_report_markdown
from factory_assets.ml.training import train_candidate
from factory_assets.platform import settings
from factory_assets.platform.settings import HOLDOUT_DAYS

MODEL_CODE_VERSION = "2"  # 2: the ranker's long purchase-history features (the candidate_model asset's code version)
FULL_SEARCH_EVERY_DAYS = 7  # a warm-started search chain is refreshed by a full search at least this often
SEARCHED = ("factors", "regularization", "alpha", "iterations", "ranker_c")  # what the ranker's search chooses
# params that neither the search nor the day sets: a champion that differs in one of them cannot lend its choice
_NOT_COMPARED = {*SEARCHED, "search_budget", "regime_start", "regime_decay", "regime_trend", "use_gpu", "als_weight", "num_threads", "max_eval_users",
                 "max_label_users"}

logger = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[Any]]


class Log(Protocol):
    """What is logged to: a ``logging.Logger`` or Dagster's ``context.log``."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...

    def error(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


class ArtefactDirs(Protocol):
    """Where a candidate's files go (e.g. :class:`factory_assets.ml.resources.ArtefactStore`)."""

    @property
    def models(self) -> Path: ...  # manifests and model files (created)

    @property
    def reports(self) -> Path: ...  # report plots

    @property
    def aliases(self) -> Path: ...  # the alias pointers


class WindowMissing(Exception):
    """The day's training window was not recorded, or is incomplete: nothing to train on (not retryable)."""


# --------------------------------------------------------------------------------------------- training_window


@dataclass(frozen=True)
class WindowDay:
    """The recorded window (:func:`factory_assets.feature_store.store.window_manifest`), as the asset shows it."""

    window: str  # "start..end" (ISO days)
    window_version: str  # sha256 of the inputs' data versions
    complete: bool
    missing: dict[str, list[str]]  # {view: [iso days]}, views with missing days only
    input_partitions: int
    interaction_rows: int  # rows of user_item_daily in the window

    @property
    def description(self) -> str:
        """The ``window_complete`` check's description."""
        return "complete" if self.complete else f"missing feature partitions: {self.missing}"


def save_window(connect_features: Connect, connect_registry: Connect, day: date, window_days: int) -> WindowDay:
    """Read the feature partitions of the ``window_days`` days ending ``day`` from the feature store's ledger and
    save the manifest in the registry's store (:func:`factory_assets.ml.registry.save_window_manifest`)."""
    with connect_features() as con:
        manifest = store.window_manifest(con, day, window_days)
    with connect_registry() as reg:
        model_registry.save_window_manifest(reg, day, manifest)
    return WindowDay(
        window=f"{manifest['start']}..{manifest['end']}",
        window_version=manifest["window_version"],
        complete=manifest["complete"],
        missing={view: days for view, days in manifest["missing"].items() if days},
        input_partitions=len(manifest["inputs"]),
        interaction_rows=sum(i["row_count"] for i in manifest["inputs"] if i["asset"] == store.USER_ITEM_DAILY),
    )


# --------------------------------------------------------------------------------------------- candidate_model


@dataclass(frozen=True)
class GateCheck:
    """One promotion gate as an asset check result: ``metadata`` holds its numbers (None values left out)."""

    name: str
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)
    severity: str = "ERROR"  # an AssetCheckSeverity value (the gates block: every one is an error)


@dataclass(frozen=True)
class CandidateDay:
    """What :func:`train_day` did: the registered version, its verdict and the evaluation behind it."""

    day: date
    version: int
    registry_status: str  # the registry row's status after the run (a re-run keeps a champion's/retired status)
    verdict: str  # promotion.PROMOTE / SHADOW / REJECT / BACKTEST
    reason: str
    manifest_path: Path
    manifest_sha256: str  # also the candidate's data version
    evaluation: dict  # training.CandidateResult.evaluation()
    als_weight: float | None  # of the evaluated model
    regime_start: str | None  # ISO day of the drift change point the fits down-weight before; None: no drift
    decision_markdown: str
    evaluation_report: str  # Markdown, the plot embedded
    plot: bytes  # PNG of NDCG@10 by activity segment
    plot_path: Path
    checks: tuple[GateCheck, ...]  # one per gate, in promotion.GATES order
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds: read, train, artefacts, gates, register
    search: dict = field(default_factory=dict)  # search_plan's record (also in the manifest)


def _ranker_manifest(model) -> dict | None:
    """What the manifest says of a ranker model: kind, features and the sha256 of its ranker arrays (in the npz)."""
    if model.ranker is None:
        return None
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


def search_plan(params: ModelParams, day: date, champion_manifest: dict | None, champion_version: int | None = None,
                champion_tainted: bool = False, warm_start: bool = True) -> tuple[ModelParams, dict]:
    """Warm start or full search: the params to train with and the manifest's ``search`` record.

    A ranker whose search is on (``ranker_c`` None, ``search_budget`` > 0) re-uses the champion's chosen
    :data:`SEARCHED` parameters (no search: ``search_budget`` 0, ``ranker_c`` fixed) unless a full search is
    asked for: no champion (or not a ranker), a drift change point (``params.regime_start``) other than the one
    the champion was trained with, another model code version, other non-searched parameters, a champion
    trained on data since erased, a search made on ``day`` or after (a backtest, or a re-run of the day that
    searched: searching again reproduces it), a chain of warm starts whose last full search is
    :data:`FULL_SEARCH_EVERY_DAYS` days or more before ``day``, or ``warm_start`` False.

    The manifest keeps only ``mode`` and ``searched_on`` (:func:`manifest_search`): what the parameters are,
    not which champion lent them, so a re-run of a day reproduces its manifest and registry version.

    Returns:
        ``(params, {"mode": "full"|"warm_start"|"fixed", "reason", "searched_on": ISO day of the full search the
        parameters come from, "from_version": the champion's version or None})``.
    """
    if params.model_kind != "ranker" or params.ranker_c is not None or params.search_budget <= 0:
        return params, {"mode": "fixed", "reason": "the parameters are fixed by the run config (no search)",
                        "searched_on": None, "from_version": None}
    reason = None
    search = (champion_manifest or {}).get("search") or {}
    cp = (champion_manifest or {}).get("params") or {}
    if not warm_start:
        reason = "warm start off"
    elif champion_manifest is None:
        reason = "no champion to start from"
    elif params.regime_start != cp.get("regime_start"):  # a change point the champion's search did not see
        reason = (f"behaviour drift since {params.regime_start} (the champion's: {cp.get('regime_start') or 'none'})"
                  if params.regime_start else f"the champion's drift regime ({cp.get('regime_start')}) left the window")
    elif champion_manifest.get("code_version") != MODEL_CODE_VERSION:
        reason = f"model code version {champion_manifest.get('code_version')} -> {MODEL_CODE_VERSION}"
    elif champion_tainted:
        reason = "the champion was trained on data since erased"
    elif cp.get("model_kind") != "ranker" or cp.get("ranker_c") is None or search.get("mode") not in ("full", "warm_start"):
        reason = "the champion records no ranker search"
    elif changed := sorted(k for k, v in params.as_dict().items() if k not in _NOT_COMPARED and cp.get(k, v) != v):
        reason = f"parameters changed since the champion: {', '.join(changed)}"
    elif date.fromisoformat(search["searched_on"]) >= day:  # a backtest, or a re-run of the day that searched
        reason = f"the champion's parameters were searched on {search['searched_on']}, not before this day"
    elif (day - date.fromisoformat(search["searched_on"])).days >= FULL_SEARCH_EVERY_DAYS:
        reason = f"the last full search ({search['searched_on']}) is {FULL_SEARCH_EVERY_DAYS}+ days old"
    if reason is not None:
        return params, {"mode": "full", "reason": reason, "searched_on": day.isoformat(), "from_version": None}
    warm = replace(params, search_budget=0, **{k: float(cp[k]) if k == "ranker_c" else cp[k] for k in SEARCHED})
    return warm, {"mode": "warm_start", "reason": f"the parameters of champion v{champion_version}, searched on "
                  f"{search['searched_on']}", "searched_on": search["searched_on"], "from_version": champion_version}


def manifest_search(search: dict) -> dict:
    """The part of :func:`search_plan`'s record that the manifest keeps: ``{"mode", "searched_on"}``."""
    return {"mode": search["mode"], "searched_on": search["searched_on"]}


def train_day(
    connect_features: Connect, connect_registry: Connect, artefacts: ArtefactDirs, day: date, source: str,
    params: ModelParams, policy: Mapping[str, Any], *, drift_reweighting: bool = True, warm_start: bool = True,
    log: Log | None = None,
) -> CandidateDay:
    """Train, judge and register the candidate of ``day`` on its recorded training window.

    Args:
        connect_features: opens a (read-only) feature store connection; connect_registry: a registry connection.
        artefacts: the artefact and alias folders.
        source: the data source's name (recorded in the manifest).
        params: the hyper-parameters; ``regime_start`` and ``use_gpu`` are set here (drift monitor, settings).
        policy: the promotion thresholds (``ModelPolicy.promotion()``: ``baseline_margin``,
            ``champion_tolerance``, ``confidence``, ``bootstrap_resamples``, ``max_artefact_mb``,
            ``max_recommend_ms``, ``sample_users``).
        drift_reweighting: down-weight the days before the drift monitor's change point.
        warm_start: re-use the champion's searched parameters when nothing asks for a full search
            (:func:`search_plan`); False: always search.
        log: where progress and warnings go (default: this module's logger).

    Raises:
        WindowMissing: the ``training_window`` of ``day`` is missing or incomplete.
    """
    log = log or logger
    clock = _Clock()
    with connect_features() as con, connect_registry() as reg:
        # an erasure since the last run (the erasure_watch sensor may not have ticked yet)
        if marked := mark_trained_on_erased_data(reg, con):
            log.warning(f"trained on data since erased: v{', v'.join(map(str, marked))}")
        champion = model_registry.read_alias(artefacts.aliases)
        champion_tainted = champion is not None and model_registry.has_event(reg, champion["version"], model_registry.ERASED_DATA)
        window = model_registry.load_window_manifest(reg, day)
    if window is None or not window["complete"]:
        raise WindowMissing(f"training_window {day} is missing or incomplete; materialise the window's features first")
    with connect_features() as con:
        start, end = (date.fromisoformat(window[k]) for k in ("start", "end"))
        frame = store.read_window(con, start, end)
        feature_versions = {
            view: retrieval.feature_view_version(con, view, start, end) for view in (store.USER_ITEM_DAILY, store.ITEM_DAILY)
        }
        regime = regime_start(con, start, end) if drift_reweighting else None
        params = replace(params, regime_start=None if regime is None else regime.isoformat(), use_gpu=settings.als_gpu())
        categories = read_item_categories(con) if regime is not None else None  # the regime's category trend
        history, history_manifest = None, None
        if params.model_kind == "ranker" and params.history_days > 0:
            # every fit reads history_days before its own as-of day: the earliest as-of is after the window's start
            history, history_manifest = retrieval.purchase_history(con, end, params.history_days + (end - start).days)
            present = len(history_manifest["inputs"])
            (log.warning if history_manifest["missing"] else log.info)(
                f"purchase history: {present} of {history_manifest['days']} days present, {len(history)} converting rows"
                + (f"; missing {history_manifest['missing'][0]}..{history_manifest['missing'][-1]} (ingest them "
                   "to give the fits their full history)" if history_manifest["missing"] else ""))
    if regime is not None:
        log.info(f"behaviour drift since {regime}: the days before it are down-weighted in the fits")
    champion_manifest = None
    if warm_start and champion is not None:
        try:
            champion_manifest = read_manifest(champion["path"], champion["sha256"])
        except (ArtefactIntegrityError, FileNotFoundError) as exc:
            log.warning(f"champion v{champion['version']}'s manifest cannot be read, full search: {exc}")
    params, search = search_plan(params, day, champion_manifest, champion and champion["version"], champion_tainted,
                                 warm_start)
    log.info(f"ranker search: {search['mode']} ({search['reason']})")
    clock.lap("read")
    result = train_candidate(frame, (start, end), HOLDOUT_DAYS, params, history=history, categories=categories)
    if result.regime is not None:
        chosen = result.regime["served"]
        log.info(f"drift regime since {regime}: forget the days before it by {chosen['chosen']['decay']} per day, "
                 f"category trend {chosen['chosen']['trend']:g} ({chosen['method']}, {chosen['n_users']} users)")
    del history
    clock.lap("train")

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
            log.error(f"champion v{champion['version']} cannot be verified and is not compared: {exc}")
    if champion_skip:
        log.info(f"champion gate: {champion_skip}")

    clock.lap("gates")  # the champion's evaluation on the candidate's users (the champion gate's input)
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
        "search": manifest_search(search),  # full search, or the day of the search the parameters come from
        "sampling": result.sampling,  # evaluated and label users before/after the caps (cost bound at scale)
        "ranker": _ranker_manifest(result.served_model),
        # the drift regime's validated choice (recsys.regime.choose_regime), per model; None without a change point
        "regime": result.regime,
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

    clock.lap("artefacts")
    served = load_model(served_path, served_sha)  # the gate judges the bytes that will be served
    gates = [
        promotion.beats_baseline(
            result.model_report.ndcg, {n: r.ndcg for n, r in result.baselines.items()}, policy["baseline_margin"]
        ),
        promotion.not_worse_than_champion(
            result.model_report.per_user_ndcg,
            None if champion_report is None else champion_report.per_user_ndcg,
            policy["champion_tolerance"],
            None if champion is None else champion["version"],
            "it was trained on data since erased" if champion_tainted else None,
            confidence=policy["confidence"],
            n_resamples=policy["bootstrap_resamples"],
            not_compared=champion_skip,
        ),
        promotion.safe_to_serve(
            served, served_path, set(frame["user_id"]), set(frame["item_id"]),
            max_artefact_mb=policy["max_artefact_mb"], max_recommend_ms=policy["max_recommend_ms"],
            sample_users=policy["sample_users"],
        ),
    ]
    verdict, reason = promotion.decide(gates, backtest_of=champion["version"] if backtest else None)
    clock.lap("gates")
    status = {promotion.PROMOTE: "candidate", promotion.SHADOW: "shadow", promotion.REJECT: "rejected",
              promotion.BACKTEST: "backtest"}[verdict]
    record = {
        "verdict": verdict,
        "evaluation": evaluation,
        "champion": None if champion_report is None else {"version": champion["version"], **champion_report.as_dict()},
        "champion_compared": champion_report is not None,
        "champion_not_compared": champion_skip,  # why the champion gate did not compare (leakage, backtest)
        "gates": [{"name": g.name, "passed": g.passed, "reason": g.reason, "metadata": g.metadata} for g in gates],
        "policy": dict(policy),
    }
    markdown = decision_markdown(day, verdict, reason, evaluation, record["champion"], gates, dict(policy))
    with connect_registry() as reg:
        version = model_registry.register(reg, day, manifest_path, manifest_sha, status, reason, record)
        model_registry.record_decision(reg, version, day, verdict, reason, record, markdown)
        registry_status = model_registry.version_row(reg, version)["status"]  # a re-run keeps a champion's/retired status
        if verdict == promotion.SHADOW:
            model_registry.designate_shadow(reg, artefacts.aliases, version, reason)
    clock.lap("register")
    log.info(f"candidate v{version} ({day}): {verdict}; {reason} ({clock.summary()})")
    return CandidateDay(
        day=day,
        version=version,
        registry_status=registry_status,
        verdict=verdict,
        reason=reason,
        manifest_path=manifest_path,
        manifest_sha256=manifest_sha,
        evaluation=evaluation,
        als_weight=result.eval_model.als_weight,
        regime_start=params.regime_start,
        decision_markdown=markdown,
        evaluation_report=evaluation_report_markdown(evaluation, plot),
        plot=plot,
        plot_path=plot_path,
        checks=tuple(
            GateCheck(name=g.name, passed=g.passed, description=g.reason,
                      metadata={k: v for k, v in g.metadata.items() if v is not None})
            for g in gates
        ),
        seconds=clock.seconds,
        search=search,
    )


class _Clock:
    """Wall seconds (``time.perf_counter``) spent per named stage; a stage lapped twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._last, 3)
        self._last = now

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
