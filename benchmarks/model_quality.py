"""Model-quality benchmark: the served model vs the popularity and repeat baselines (NDCG@10).

    python benchmarks/model_quality.py [--json OUT] [--datasets online_retail,movielens] [--model ranker|blend|both]

Online Retail (UCI): three weekly splits, 28-day windows ending 2011-11-30, 2011-10-31, 2011-10-03 (21 train
days, the next 7 as test), through ``training.train_candidate`` exactly as the factory runs it, with the
source's long purchase history (``settings.SOURCE_HISTORY_DAYS``: 90 days before each fit, as
``candidate_model`` reads it; ``--set history_days=0`` turns it off).  The baselines see the 21 training days
(the protocol); ``references.repeat_history`` is the repeat baseline given the ranker's long history.  The daily
``user_item_daily`` frame is built from the source's events with the feature store's semantics (one row per
UTC day, user, item; purchases weigh 5, returns 0; ``n_conversions`` = purchases).

MovieLens latest-small: per-user temporal split, each user's last 20 % of ratings by time held out (all 610
users); the ranker is trained on the same per-user split carved from the training ratings (never the test
ones).  Evaluation: ``recsys.evaluation`` on the same users for every model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory_assets.ml.recsys.evaluation import build_eval_set, evaluate, evaluate_baselines, model_scores  # noqa: E402
from factory_assets.ml.recsys.baselines import repeat_unfilled_scores  # noqa: E402
from factory_assets.ml.recsys.model import ModelParams  # noqa: E402

DATA = ROOT.parent / "shared" / "data"  # ../shared/data beside the repository
OR_PATH = DATA / "online-retail" / "online_retail.parquet"
ML_PATH = DATA / "movielens-latest-small" / "ratings.csv"
OR_ENDS = (date(2011, 11, 30), date(2011, 10, 31), date(2011, 10, 3))
WINDOW, HOLDOUT = 28, 7
OVERRIDES: dict = {}


def online_retail_daily(path: Path = OR_PATH) -> pd.DataFrame:
    from factory_assets.feature_store.store import EVENT_WEIGHTS
    from factory_assets.data.sources.online_retail import OnlineRetailSource

    ev = OnlineRetailSource(path).load().fetch_all().events
    ev = ev.assign(day=ev["ts"].dt.tz_convert("UTC").dt.date,
                   w=ev["event_type"].map(EVENT_WEIGHTS).fillna(0.0),
                   conv=(ev["event_type"] == "purchase").astype(np.int64))
    g = ev.groupby(["day", "user_id", "item_id"], sort=True).agg(weight=("w", "sum"), n_conversions=("conv", "sum")).reset_index()
    return g


def run_online_retail(models: list[str]) -> list[dict]:
    from factory_assets.ml.training import train_candidate

    from factory_assets.platform.settings import SOURCE_HISTORY_DAYS

    daily = online_retail_daily()
    out = []
    for end in OR_ENDS:
        start = end - timedelta(days=WINDOW - 1)
        window = daily[(daily["day"] >= start) & (daily["day"] <= end)].reset_index(drop=True)
        params = {"history_days": SOURCE_HISTORY_DAYS["online_retail"], **OVERRIDES}
        # what candidate_model reads (features.retrieval.purchase_history): converting rows of history_days
        # days before the window's start up to its end; each fit keeps only the days up to its own as-of day
        first = start - timedelta(days=params["history_days"])
        history = daily[(daily["day"] >= first) & (daily["day"] <= end) & (daily["n_conversions"] > 0)].reset_index(drop=True)
        row = {"dataset": "online_retail", "split": f"window ending {end}", "history_days": params["history_days"]}
        for kind in models:
            t0 = time.perf_counter()
            result = train_candidate(window, (start, end), HOLDOUT, ModelParams(**{**params, "model_kind": kind}),
                                     history=history if params["history_days"] else None)
            elapsed = time.perf_counter() - t0
            ev = result.evaluation()
            row[kind] = ev["model"]["ndcg_at_10"]
            row[f"{kind}_train_s"] = round(elapsed, 1)
            row["n_users"] = ev["model"]["n_users"]
            row["baselines"] = {k: v["ndcg_at_10"] for k, v in ev["baselines"].items()}
            row["references"] = {k: v["ndcg_at_10"] for k, v in ev["references"].items()}
            row["references"]["repeat_unfilled"] = round(evaluate(
                repeat_unfilled_scores(result.split.train, result.eval_set.user_ids, result.eval_set.catalogue),
                result.eval_set).ndcg, 6)
            if kind == "ranker":
                row["search_trace"] = result.tuning.trace
        out.append(row)
        print(row, file=sys.stderr)
    return out


def per_user_split(frame: pd.DataFrame, fraction: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's last ``fraction`` of rows by time (``ts``, ties by item) held out; the rest is training."""
    frame = frame.sort_values(["user_id", "ts", "item_id"], kind="stable").reset_index(drop=True)
    pos = frame.groupby("user_id").cumcount()
    n = frame.groupby("user_id")["item_id"].transform("size")
    n_test = np.floor(n * fraction).astype(int)
    is_test = pos >= (n - n_test)
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)


def run_movielens(models: list[str]) -> list[dict]:
    from factory_assets.ml.recsys import ranker
    from factory_assets.ml.recsys.evaluation import tune_als_weight  # noqa: F401  (blend uses a fixed weight here)
    from factory_assets.ml.recsys.model import fit_model

    r = pd.read_csv(ML_PATH)
    ts = pd.to_datetime(r["timestamp"], unit="s", utc=True)
    frame = pd.DataFrame({"user_id": r["userId"].astype(str), "item_id": r["movieId"].astype(str), "ts": ts,
                          "day": ts.dt.date, "weight": np.where(r["rating"] >= 4, 5.0, 1.0),
                          "n_conversions": (r["rating"] >= 4).astype(np.int64)})
    train, test = per_user_split(frame)
    as_of = max(train["day"])
    eval_set = build_eval_set(train, test)
    row = {"dataset": "movielens", "split": "per-user last 20%", "n_users": int(len(eval_set.user_ids))}
    row["baselines"] = {k: round(v.ndcg, 6) for k, v in evaluate_baselines(train, eval_set).items()}
    base = ModelParams(**{"half_life_days": 3650.0, "recency_half_life_days": 365.0, **OVERRIDES})
    for kind in models:
        t0 = time.perf_counter()
        if kind == "ranker":
            inner_train, inner_val = per_user_split(train)
            inner_set = build_eval_set(inner_train, inner_val)
            label_items = [{str(inner_set.catalogue[j]) for j in t} for t in inner_set.truth]
            fit = ranker.train_ranker([ranker.LabelSlice(inner_train, max(inner_train["day"]), inner_set.user_ids, label_items)], base)
            model = ranker.fit_ranker_model(train, as_of, fit)
            row["search_trace"] = fit.trace
        else:
            model = fit_model(train, as_of, base, als_weight=1.0)
        row[kind] = round(evaluate(model_scores(model, eval_set), eval_set).ndcg, 6)
        row[f"{kind}_train_s"] = round(time.perf_counter() - t0, 1)
        row.setdefault("references", {})["als"] = round(evaluate(model_scores(model.als_only(), eval_set), eval_set).ndcg, 6)
    print(row, file=sys.stderr)
    return [row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--datasets", default="online_retail,movielens")
    parser.add_argument("--model", default="both", choices=["ranker", "blend", "both"])
    parser.add_argument("--set", action="append", default=[], help="ModelParams override k=v (applies to every model)")
    args = parser.parse_args(argv)
    for kv in args.set:
        k, v = kv.split("=", 1)
        OVERRIDES[k] = type(getattr(ModelParams(), k))(v) if getattr(ModelParams(), k) is not None else float(v)
    models = ["blend", "ranker"] if args.model == "both" else [args.model]
    rows: list[dict] = []
    if "online_retail" in args.datasets:
        rows += run_online_retail(models)
    if "movielens" in args.datasets:
        rows += run_movielens(models)
    served = models[-1]
    print(f"{'dataset':14} {'split':26} {'users':>6} " + " ".join(f"{m:>8}" for m in models)
          + f" {'popular':>8} {'repeat':>8} {'als':>8} {'x best':>7}")
    for row in rows:
        best = max(row["baselines"].values())
        print(f"{row['dataset']:14} {row['split']:26} {row['n_users']:>6} " + " ".join(f"{row[m]:8.4f}" for m in models)
              + f" {row['baselines']['popularity']:8.4f} {row['baselines']['repeat']:8.4f} {row['references']['als']:8.4f}"
              + f" {row[served] / best:7.3f}"
              + (f"   (vs unfilled repeat {row[served] / row['references']['repeat_unfilled']:.3f})"
                 if row["references"].get("repeat_unfilled") else "")
              + (f"   (vs repeat over the same {row['history_days']}-day history "
                 f"{row['references']['repeat_history']:.4f}: {row[served] / row['references']['repeat_history']:.3f})"
                 if row["references"].get("repeat_history") else ""))
    ors = [r for r in rows if r["dataset"] == "online_retail"]
    if ors:
        ratios = [r[served] / max(r["baselines"].values()) for r in ors]
        print(f"online_retail: {served} / best baseline: mean {np.mean(ratios):.3f}, min {min(ratios):.3f}")
        if all(r["references"].get("repeat_history") for r in ors):
            long = [r[served] / r["references"]["repeat_history"] for r in ors]
            print(f"online_retail: {served} / repeat over the same long history: mean {np.mean(long):.3f}, min {min(long):.3f}")
    if args.json:
        table = [{"dataset": r["dataset"], "split": r["split"], "n_users": r["n_users"],
                  "served_ndcg_at_10": r[served], "baselines_ndcg_at_10": r["baselines"],
                  "references_ndcg_at_10": r["references"], **{f"{m}_ndcg_at_10": r[m] for m in models},
                  **{f"{m}_train_s": r[f"{m}_train_s"] for m in models}} for r in rows]
        args.json.write_text(json.dumps({"served": served, "table": table, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
