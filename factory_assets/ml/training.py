"""Training and evaluation of one daily candidate, as a pure function of its feature window.

Steps (no test day is ever used for fitting or tuning):

1. split the window into train (first days) and test (last ``holdout_days``);
2. tune on the train days only: the learned ranker (``recsys.ranker``, default ``model_kind="ranker"``) is
   trained and searched on slices of the train days (features before labels in each), the blend's ALS
   weight on an inner split; a ranker with no labelled slice falls back to the blend; with
   ``params.history_days`` the ranker also reads each user's purchases of that many days before every fit's
   as-of day (``recsys.candidates.long_history``), point-in-time like everything else;
3. fit the evaluation model on the train days and score it, both baselines and the plain-ALS reference on
   the same users (see ``recsys.evaluation``), with the beyond-accuracy report of the candidate's and the
   baselines' lists (concentration, repeat vs new items, activity segments: ``recsys.report``);
4. refit on the whole window with the same parameters and seed: the served artefact knows the latest days.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import cached_property

import numpy as np
import pandas as pd

from factory_assets.ml.recsys import baselines as baseline_scores
from factory_assets.ml.recsys.candidates import history_as_of
from factory_assets.ml.recsys.evaluation import (
    K,
    EvalSet,
    TemporalSplit,
    Tuning,
    build_eval_set,
    evaluate,
    evaluate_baselines,
    model_scores,
    sample_users,
    temporal_split,
    tune_als_weight,
)
from factory_assets.ml.recsys.metrics import RankingReport, top_k
from factory_assets.ml.recsys.model import BlendModel, ModelParams, fit_model
from factory_assets.ml.recsys.regime import choose_regime, with_regime_terms
from factory_assets.ml.recsys.report import candidate_report

CANDIDATE = "candidate"  # the candidate's name in the list report and its segment table


@dataclass(frozen=True)
class CandidateResult:
    split: TemporalSplit
    eval_set: EvalSet
    tuning: Tuning
    eval_model: BlendModel
    served_model: BlendModel
    model_report: RankingReport
    baselines: dict[str, RankingReport]
    references: dict[str, RankingReport]
    cold_start: RankingReport | None = None
    # users evaluated / used as labels, before and after the caps (ModelParams.max_eval_users, max_label_users)
    sampling: dict | None = None
    # the drift regime's validated choice per model (``recsys.regime.choose_regime``): {"eval": ..., "served": ...}
    regime: dict | None = None

    @cached_property
    def list_report(self) -> dict:
        """``recsys.report.candidate_report`` of the eval model (as ``"candidate"``) and both baselines on the
        evaluated users, from the current ``eval_model`` (computed on first use, then kept)."""
        ev, train = self.eval_set, self.split.train
        tops = {
            CANDIDATE: top_k(model_scores(self.eval_model, ev), K),
            "popularity": top_k(baseline_scores.popularity_scores(train, ev.user_ids, ev.catalogue), K),
            "repeat": top_k(baseline_scores.repeat_scores(train, ev.user_ids, ev.catalogue), K),
        }
        return candidate_report(tops, ev, train, K)

    def evaluation(self) -> dict:
        """The JSON summary: ``model``, ``baselines`` (exactly popularity and repeat), ``references``, ``segments``.

        ``model`` and each baseline also carry ``gini_at_10``, ``repeat_share_at_10``, ``new_share_at_10`` and
        ``repeat_hit_share_at_10`` (``recsys.report``); ``segments`` is the activity-segment table
        (``recsys.report.segment_table``: candidate, popularity and repeat per segment).
        """
        n_cold = 0 if self.cold_start is None else self.cold_start.n_users
        quality = self.list_report["quality"]
        extra = {
            "train_days": [d.isoformat() for d in self.split.train_days],
            "test_days": [d.isoformat() for d in self.split.test_days],
            "als_weight": self.eval_model.als_weight,
            "model_kind": "ranker" if self.eval_model.ranker is not None else "blend",
            # cold-start users: converted in the test days on catalogue items, no training row at all; they are
            # not in the protocol's evaluated users and get the fallback (recency-weighted popularity)
            "cold_start_users": n_cold,
            "cold_start_ndcg_at_10": None if self.cold_start is None else round(self.cold_start.ndcg, 6),
            # cold-start users / (evaluated users + cold-start users): the share of test-day converters the
            # model meets with no history (evaluated users need a training conversion, so the rest, users with
            # training rows but no training conversion, are in neither count)
            "cold_start_share": round(n_cold / (self.model_report.n_users + n_cold), 6)
            if self.model_report.n_users + n_cold else 0.0,
        }
        return {
            "model": self.model_report.as_dict() | quality[CANDIDATE] | extra,
            "baselines": {name: report.as_dict() | quality.get(name, {}) for name, report in self.baselines.items()},
            "references": {name: report.as_dict() for name, report in self.references.items()},
            "segments": self.list_report["segments"],
        }


def train_candidate(window: pd.DataFrame, bounds: tuple[date, date], holdout_days: int, params: ModelParams,
                    history: pd.DataFrame | None = None, categories: pd.Series | None = None) -> CandidateResult:
    """Train, evaluate and refit one candidate on ``window`` (``user_item_daily`` rows of ``bounds``).

    ``history``: converting ``user_item_daily`` rows of the days up to ``bounds[1]``
    (``features.retrieval.purchase_history``), read by a ranker with ``params.history_days > 0``: every fit
    takes only the ``history_days`` days ending its own as-of day (label slices, the evaluation model on the
    train days, the served model), so no test day reaches the evaluation model.  The plain-ALS reference and,
    with a history, ``repeat_history`` (the repeat baseline over the same long history) are in ``references``.

    With a drift change point (``params.regime_start``), how much the days before it are forgotten and whether
    the category trend applies (``categories``: item id -> category, None when the source has none) are chosen
    by ``recsys.regime.choose_regime``, on the train days for the evaluation model and on the whole window for
    the served one; both models carry the regime's terms (``recsys.regime.with_regime_terms``).

    Raises:
        ValueError: if the training days hold no interactions, or no user converted in both train and
            test days (nothing to evaluate on: the candidate cannot earn promotion).
    """
    split = temporal_split(window, bounds, holdout_days)
    if split.train.empty:
        raise ValueError(f"no interactions in the training days {split.train_days[0]}..{split.train_days[1]}")
    full_set = build_eval_set(split.train, split.test)
    if len(full_set.user_ids) == 0:
        raise ValueError(
            f"no user converted both in {split.train_days[0]}..{split.train_days[1]} and in "
            f"{split.test_days[0]}..{split.test_days[1]}: nothing to evaluate"
        )
    eval_set = sample_users(full_set, params.max_eval_users)
    sampling = {"eval_users": len(full_set.user_ids), "eval_users_sampled": len(eval_set.user_ids),
                "max_eval_users": params.max_eval_users, "max_label_users": params.max_label_users,
                "method": "the users with the smallest pandas.util.hash_array of their id"}
    del full_set
    regime = None
    eval_params, served_params = params, params
    if params.regime_start is not None:
        weight = params.als_weight if params.als_weight is not None else params.als_weight_grid[len(params.als_weight_grid) // 2]
        eval_params, eval_choice = choose_regime(split.train, split.train_days[1], params, weight, categories)
        served_params, served_choice = choose_regime(window, bounds[1], params, weight, categories)
        regime = {"eval": eval_choice, "served": served_choice}
    ranked = (_train_ranker(window, bounds, split, holdout_days, eval_params, history, sampling, served_params)
              if params.model_kind == "ranker" else None)
    if ranked is not None:
        tuning, eval_model, served = ranked
    else:  # the blend (also the ranker's fallback when the train days hold no labelled slice)
        eval_params, served_params = (replace(p, model_kind="blend") for p in (eval_params, served_params))
        tuning = tune_als_weight(split.train, split.train_days, eval_params, holdout_days)
        eval_model = fit_model(split.train, split.train_days[1], eval_params, tuning.als_weight)
        served = fit_model(window, bounds[1], served_params, tuning.als_weight)
    eval_model = with_regime_terms(eval_model, split.train, categories)
    served = with_regime_terms(served, window, categories)
    report = evaluate(model_scores(eval_model, eval_set), eval_set)
    references = {"als": evaluate(model_scores(eval_model.als_only(), eval_set), eval_set)}
    if ranked is not None and history is not None and params.history_days > 0:
        # the repeat baseline given the same long history as the ranker (a reference; the gate's baseline
        # stays the protocol's: the training days only)
        references["repeat_history"] = evaluate(
            baseline_scores.repeat_scores(history_as_of(history, split.train_days[1], params.history_days)[0],
                                          eval_set.user_ids, eval_set.catalogue), eval_set)
    return CandidateResult(
        cold_start=cold_start_report(split, eval_set, eval_model),
        split=split,
        eval_set=eval_set,
        tuning=tuning,
        eval_model=eval_model,
        served_model=served,
        model_report=report,
        baselines=evaluate_baselines(split.train, eval_set),
        references=references,
        sampling=sampling,
        regime=regime,
    )


def cold_start_report(split: TemporalSplit, eval_set: EvalSet, model: BlendModel) -> RankingReport | None:
    """Metrics of the model's fallback on the test-day converters with no training row (None if there are none)."""
    known = set(split.train["user_id"].astype(str))
    test = split.test[(split.test["n_conversions"] > 0) & ~split.test["user_id"].astype(str).isin(known)]
    test = test[test["item_id"].astype(str).isin(set(eval_set.catalogue.tolist()))]
    if test.empty:
        return None
    positions = {item: i for i, item in enumerate(eval_set.catalogue.tolist())}
    grouped = test.groupby(test["user_id"].astype(str))["item_id"].agg(lambda s: {positions[str(i)] for i in s})
    cold = EvalSet(catalogue=eval_set.catalogue, user_ids=np.sort(grouped.index.to_numpy(dtype=str)).astype(str),
                   truth=[grouped[u] for u in np.sort(grouped.index.to_numpy(dtype=str))])
    return evaluate(model_scores(model, cold), cold)


RANKER_LABEL_OFFSETS = (0, 3, 6)  # label windows end this many days before the last training day


def ranker_slices(train: pd.DataFrame, train_days: tuple[date, date], holdout_days: int, offsets=RANKER_LABEL_OFFSETS,
                  max_label_users: int = 0, sampled: list | None = None):
    """Training slices for the ranker from the TRAIN rows only: for each offset, labels = conversions in the
    ``holdout_days`` days ending ``offset`` days before the last training day, features = the days before them.

    ``max_label_users`` > 0: at most that many label users per slice (``evaluation.sample_users``), and no
    further (older) slice once one slice had more label users than that: the newest labels are enough at that
    scale, and each slice costs a fit of every candidate source.  ``sampled``, when given, receives
    ``{"as_of", "label_users", "label_users_sampled"}`` per slice."""
    from factory_assets.ml.recsys.ranker import LabelSlice

    slices = []
    for offset in offsets:
        end = train_days[1] - timedelta(days=offset)
        if (end - train_days[0]).days + 1 <= holdout_days + 7:
            continue
        days = pd.to_datetime(train["day"]).dt.date
        inner = temporal_split(train[days <= end].reset_index(drop=True), (train_days[0], end), holdout_days)
        inner_set = build_eval_set(inner.train, inner.test)
        if inner.train.empty or len(inner_set.user_ids) == 0:
            continue
        n_label = len(inner_set.user_ids)
        inner_set = sample_users(inner_set, max_label_users)
        if sampled is not None:
            sampled.append({"as_of": inner.train_days[1].isoformat(), "label_users": n_label,
                            "label_users_sampled": len(inner_set.user_ids)})
        label_items = [{str(inner_set.catalogue[j]) for j in t} for t in inner_set.truth]
        slices.append(LabelSlice(inner.train, inner.train_days[1], inner_set.user_ids, label_items))
        if 0 < max_label_users < n_label:
            break
    return slices


def _train_ranker(window, bounds, split: TemporalSplit, holdout_days: int, params: ModelParams, history=None,
                  sampling: dict | None = None, served_params: ModelParams | None = None):
    """The learned ranker (``recsys.ranker``): search and fit on slices of the TRAIN days only; None when no
    slice can be built (the caller then trains the blend).  ``sampling`` receives the slices' label users."""
    from factory_assets.ml.recsys import ranker

    sampled: list[dict] = []
    slices = [replace(sl, history=history) for sl in ranker_slices(
        split.train, split.train_days, holdout_days, max_label_users=params.max_label_users, sampled=sampled)]
    if sampling is not None:
        sampling["label_slices"] = sampled
    if not slices:  # too few training days or no user converting in both parts: fall back to the blend
        return None
    fit = ranker.train_ranker(slices, params)
    eval_model = ranker.fit_ranker_model(split.train, split.train_days[1], fit, history)
    if served_params is not None and served_params.regime_start is not None:  # the served model's validated regime
        fit = replace(fit, params=replace(fit.params, regime_decay=served_params.regime_decay,
                                          regime_trend=served_params.regime_trend))
    served = ranker.fit_ranker_model(window, bounds[1], fit, history)
    return Tuning(0.0, fit.trace), eval_model, served


def retrain_from_manifest(con, manifest: dict) -> dict[str, str]:
    """Re-train a registered version from its manifest on the same partitions; return the artefact digests.

    Uses the manifest's parameters, seed and thread count and its window; refuses when an input partition's
    data version has changed since (the result could not be the same model).

    Returns:
        ``{"eval": sha256, "served": sha256}`` of the re-trained artefacts' bytes (compare with the manifest's).
    Raises:
        ValueError: if the window's inputs are no longer the ones the manifest names.
    """
    from factory_assets.feature_store import store
    from factory_assets.feature_store.contract import stale_inputs
    from factory_assets.ml.recsys.artefact import model_arrays, npz_bytes

    changed = stale_inputs(con, manifest)
    if changed:
        raise ValueError(f"inputs changed since training, cannot reproduce: {changed[:3]}")
    params = dict(manifest["params"])
    params["als_weight_grid"] = tuple(params["als_weight_grid"])
    params["als_weight"] = None  # re-run the tuning too: it is part of the recipe
    start, end = date.fromisoformat(manifest["window"]["start"]), date.fromisoformat(manifest["window"]["end"])
    history = None
    if manifest.get("history"):
        from factory_assets.feature_store.retrieval import purchase_history

        history, _ = purchase_history(con, date.fromisoformat(manifest["history"]["end"]), manifest["history"]["days"])
    result = train_candidate(store.read_window(con, start, end), (start, end), manifest["holdout_days"],
                             ModelParams(**params), history=history)
    return {
        role: hashlib.sha256(npz_bytes(model_arrays(model))).hexdigest()
        for role, model in (("eval", result.eval_model), ("served", result.served_model))
    }
