"""Training and evaluation of one daily candidate, as a pure function of its feature window.

Steps (no test day is ever used for fitting or tuning):

1. split the window into train (first days) and test (last ``holdout_days``);
2. choose the history weight on an inner split of the train days;
3. fit the evaluation model on the train days and score it, both baselines and the plain-ALS reference on
   the same users (see ``recsys.evaluation``);
4. refit on the whole window with the same parameters and seed: the served artefact knows the latest days.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

import pandas as pd

from factory_assets.recsys.evaluation import (
    EvalSet,
    TemporalSplit,
    Tuning,
    build_eval_set,
    evaluate,
    evaluate_baselines,
    model_scores,
    temporal_split,
    tune_als_weight,
)
from factory_assets.recsys.metrics import RankingReport
from factory_assets.recsys.model import BlendModel, ModelParams, fit_model


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

    def evaluation(self) -> dict:
        """The JSON summary: ``model``, ``baselines`` (exactly popularity and repeat), ``references``."""
        extra = {
            "train_days": [d.isoformat() for d in self.split.train_days],
            "test_days": [d.isoformat() for d in self.split.test_days],
            "als_weight": self.eval_model.als_weight,
        }
        return {
            "model": self.model_report.as_dict() | extra,
            "baselines": {name: report.as_dict() for name, report in self.baselines.items()},
            "references": {name: report.as_dict() for name, report in self.references.items()},
        }


def train_candidate(window: pd.DataFrame, bounds: tuple[date, date], holdout_days: int, params: ModelParams) -> CandidateResult:
    """Train, evaluate and refit one candidate on ``window`` (``user_item_daily`` rows of ``bounds``).

    Raises:
        ValueError: if the training days hold no interactions, or no user converted in both train and
            test days (nothing to evaluate on: the candidate cannot earn promotion).
    """
    split = temporal_split(window, bounds, holdout_days)
    if split.train.empty:
        raise ValueError(f"no interactions in the training days {split.train_days[0]}..{split.train_days[1]}")
    eval_set = build_eval_set(split.train, split.test)
    if len(eval_set.user_ids) == 0:
        raise ValueError(
            f"no user converted both in {split.train_days[0]}..{split.train_days[1]} and in "
            f"{split.test_days[0]}..{split.test_days[1]}: nothing to evaluate"
        )
    tuning = tune_als_weight(split.train, split.train_days, params, holdout_days)
    eval_model = fit_model(split.train, split.train_days[1], params, tuning.als_weight)
    report = evaluate(model_scores(eval_model, eval_set), eval_set)
    plain_als = evaluate(model_scores(eval_model.als_only(), eval_set), eval_set)
    served = fit_model(window, bounds[1], params, tuning.als_weight)
    return CandidateResult(
        split=split,
        eval_set=eval_set,
        tuning=tuning,
        eval_model=eval_model,
        served_model=served,
        model_report=report,
        baselines=evaluate_baselines(split.train, eval_set),
        references={"als": plain_als},
    )


def retrain_from_manifest(con, manifest: dict) -> dict[str, str]:
    """Re-train a registered version from its manifest on the same partitions; return the artefact digests.

    Uses the manifest's parameters, seed and thread count and its window; refuses when an input partition's
    data version has changed since (the result could not be the same model).

    Returns:
        ``{"eval": sha256, "served": sha256}`` of the re-trained artefacts' bytes (compare with the manifest's).
    Raises:
        ValueError: if the window's inputs are no longer the ones the manifest names.
    """
    from factory_assets.features import store
    from factory_assets.maintenance import stale_inputs
    from factory_assets.recsys.artefact import model_arrays, npz_bytes

    changed = stale_inputs(con, manifest)
    if changed:
        raise ValueError(f"inputs changed since training, cannot reproduce: {changed[:3]}")
    params = dict(manifest["params"])
    params["als_weight_grid"] = tuple(params["als_weight_grid"])
    params["als_weight"] = None  # re-run the tuning too: it is part of the recipe
    start, end = date.fromisoformat(manifest["window"]["start"]), date.fromisoformat(manifest["window"]["end"])
    result = train_candidate(store.read_window(con, start, end), (start, end), manifest["holdout_days"], ModelParams(**params))
    return {
        role: hashlib.sha256(npz_bytes(model_arrays(model))).hexdigest()
        for role, model in (("eval", result.eval_model), ("served", result.served_model))
    }
