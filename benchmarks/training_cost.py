"""Training cost: the factory's candidate training with fixed parameters (no search) vs a bare ``implicit`` fit.

    python benchmarks/training_cost.py [--json OUT] [--events 100000] [--repeats 3] [--quick] [--fit-only]

Data: the 28-day window of a prepared simulator home (default shop 3000 users x 800 items, ``--events`` per day;
benchmarks/_common.py), read with ``store.read_window``.  The matrix is the served refit's: the whole window's
``user_item_daily`` rows -> ``log1p(weight * recency decay)`` confidence, CSR users x items.  What is timed:

1. ``bare``: ``implicit.als.AlternatingLeastSquares(factors, regularization, alpha, iterations, random_state,
   num_threads=1).fit(matrix)`` under ``threadpool_limits(1, "blas")`` -- the same settings ``fit_model`` uses,
   the matrix built beforehand (not timed).
2. ``fit_model`` (recsys/model.py): the factory's ALS step on the same rows: decay, confidence and history
   matrices from the frame (``Interactions.from_frame``), the same ALS fit, popularity, arrays.  **Target
   (issue 8): fit_model / bare <= 1.10.**  Its ALS call alone is also reported (``implicit`` ``fit`` wrapped).
3. ``train_candidate`` (training.py) with ``_common.FIXED_CANDIDATE`` (learned ranker, search_budget=1,
   ranker_c fixed: the search is excluded) and with the blend at a fixed ALS weight.  This is much more than one
   ALS fit: the ranker fits ALS + candidate sources on 3 label slices of the train days, builds the features
   of every candidate, fits the logistic regression, then refits the sources for the evaluation model (train
   days) and the served model (whole window), evaluates model, plain-ALS reference and both baselines and the
   cold-start fallback.  Reported: seconds, number of ALS fits, ALS seconds inside, ratio to one bare fit.
4. the ``candidate_model`` asset body (plain call, on a copy of the home): (3) plus reading the window, the
   champion comparison, saving artefacts + manifest, the three gates, registry writes.

``--fit-only``: (1) and (2) only (the target), interleaved ``--repeats`` times (at least 3).  Also reported:
``fit_model``'s time outside its ALS call (``1 + that / bare``: the ratio with the ALS-time noise of shared
cores taken out) and ``store.read_window`` seconds (outside every clock above; ``fit_model`` gets its frame as
the asset does).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

TARGET = 1.10


class _FitCounter:
    """Wraps implicit's CPU ALS ``fit`` to count calls and sum their seconds."""

    def __enter__(self):
        import implicit.cpu.als as cpu_als

        self.cls, self.orig = cpu_als.AlternatingLeastSquares, cpu_als.AlternatingLeastSquares.fit
        self.calls, self.seconds = 0, 0.0
        counter = self

        def fit(model, *a, **k):
            t = time.perf_counter()
            try:
                return counter.orig(model, *a, **k)
            finally:
                counter.calls += 1
                counter.seconds += time.perf_counter() - t

        self.cls.fit = fit
        return self

    def __exit__(self, *exc):
        self.cls.fit = self.orig


def confidence_matrix(frame, as_of: date, params):
    import numpy as np

    from factory_assets.ml.recsys.matrix import Interactions
    from factory_assets.ml.recsys.model import recency_decay

    decay = recency_decay(frame["day"], as_of, params.half_life_days)
    conf = frame.assign(confidence=np.log1p(frame["weight"].to_numpy(dtype=np.float64) * decay))
    return Interactions.from_frame(conf, "confidence").matrix


def bare_fit(matrix, params) -> float:
    import implicit
    from threadpoolctl import threadpool_limits

    als = implicit.als.AlternatingLeastSquares(
        factors=params.factors, regularization=params.regularization, alpha=params.alpha, iterations=params.iterations,
        random_state=params.seed, num_threads=params.num_threads, calculate_training_loss=False)
    t = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        als.fit(matrix, show_progress=False)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--events", type=float, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20k events/day, 1 repeat of the whole training")
    p.add_argument("--fit-only", action="store_true", help="only bare vs fit_model (the target); no whole training")
    p.add_argument("--cache", default=str(c.default_cache()))
    args = p.parse_args(argv)
    if args.quick:
        args.events = 20_000
    started = time.perf_counter()

    import implicit  # noqa: F401  (import outside the clocks)
    import sklearn.linear_model  # noqa: F401

    from factory_assets.feature_store import store
    from factory_assets.ml.recsys.model import ModelParams, fit_model
    from factory_assets.platform.settings import HOLDOUT_DAYS
    from factory_assets.ml.training import train_candidate

    shop = c.shop(args.events)
    days = [c.FIRST_DAY + timedelta(days=i) for i in range(28)]
    home, setup = c.prepared_home(Path(args.cache), shop, days, days[-1], c.FIXED_CANDIDATE)
    factory = c.make_factory(home, shop)
    with factory.warehouse() as con:
        t = time.perf_counter()
        frame = store.read_window(con, days[0], days[-1])
        read_s = time.perf_counter() - t
    params = ModelParams(**c.FIXED_CANDIDATE)
    matrix = confidence_matrix(frame, days[-1], params)
    print(f"  window {days[0]}..{days[-1]}: {len(frame)} rows, matrix {matrix.shape}, nnz {matrix.nnz}", flush=True)

    bare_fit(matrix, params)  # warm-up (first call pays implicit's lazy initialisation)
    bare, fm, fm_als = [], [], []
    for _ in range(max(args.repeats, 3)):  # interleaved
        bare.append(bare_fit(matrix, params))
        with _FitCounter() as counter:
            t = time.perf_counter()
            fit_model(frame, days[-1], params, 0.0)
            fm.append(time.perf_counter() - t)
        fm_als.append(counter.seconds)
    bare_s, fm_s, fm_als_s = c.median(bare), c.median(fm), c.median(fm_als)

    whole, asset_s = {}, None
    for label, prm in () if args.fit_only else (
            ("train_candidate (ranker, fixed)", params),
            ("train_candidate (blend, fixed als_weight=1.0)", replace(params, model_kind="blend", als_weight=1.0))):
        secs, calls, als_secs = [], 0, []
        for _ in range(1 if args.quick else max(1, args.repeats - 1)):
            with _FitCounter() as counter:
                t = time.perf_counter()
                train_candidate(frame, (days[0], days[-1]), HOLDOUT_DAYS, prm)
                secs.append(time.perf_counter() - t)
            calls, als_secs = counter.calls, als_secs + [counter.seconds]
        whole[label] = {"seconds": c.median(secs), "als_fits": calls, "als_seconds": c.median(als_secs), "all_s": secs}
        print(f"  {label}: {whole[label]}", flush=True)

    if not args.fit_only:  # the asset body (plain call, fresh copy of the home): training_window, then candidate_model
        work = c.copy_home(home, Path(args.cache) / "work_training")
        day = days[-1] + timedelta(days=1)
        with factory.warehouse():
            pass
        r = c.measure_cycle_subprocess("plain", work, shop, day, c.FIXED_CANDIDATE, part="cycle")
        asset_s = r["detail"]["steps"]["candidate_model"]

    ratio = fm_s / bare_s
    outside_s = c.median([a - b for a, b in zip(fm, fm_als)])
    rows = [
        {"what": "bare implicit ALS fit (same matrix, same params)", "s": bare_s, "x bare": 1.0, "ALS fits": 1, "target": "", "pass": ""},
        {"what": "fit_model (matrices + ALS + popularity)", "s": fm_s, "x bare": ratio, "ALS fits": 1,
         "target": f"<= {TARGET}", "pass": "pass" if ratio <= TARGET else "MISS"},
        {"what": "  of which implicit fit", "s": fm_als_s, "x bare": fm_als_s / bare_s, "ALS fits": 1, "target": "", "pass": ""},
        # the same ratio with fit_model's own ALS call replaced by the bare one: on shared cores the ALS time
        # itself swings by +-10 % between runs, the work around it much less
        {"what": "  outside it (median per-run difference; x bare = 1 + s / bare)", "s": outside_s,
         "x bare": 1.0 + outside_s / bare_s, "ALS fits": 0, "target": "", "pass": ""},
    ]
    for label, w in whole.items():
        rows.append({"what": label, "s": w["seconds"], "x bare": w["seconds"] / bare_s, "ALS fits": w["als_fits"],
                     "target": "", "pass": ""})
        rows.append({"what": "  of which implicit fits", "s": w["als_seconds"], "x bare": w["als_seconds"] / bare_s,
                     "ALS fits": w["als_fits"], "target": "", "pass": ""})
    if asset_s is not None:
        rows.append({"what": "candidate_model asset body (day after the window; one run)", "s": asset_s,
                     "x bare": asset_s / bare_s, "ALS fits": "", "target": "", "pass": ""})
    rows.append({"what": "store.read_window of the window (not in any clock above)", "s": read_s, "x bare": read_s / bare_s,
                 "ALS fits": "", "target": "", "pass": ""})
    c.print_table(rows, f"Training cost at {int(args.events)} events/day (28-day window, {len(frame)} rows, matrix "
                        f"{matrix.shape[0]}x{matrix.shape[1]}, nnz {matrix.nnz}); medians")
    c.write_json(args.json, {
        "benchmark": "training_cost", "machine": c.machine_info(), "events_per_day": args.events,
        "fixed_candidate": c.FIXED_CANDIDATE, "params": params.as_dict(),
        "window": {"start": days[0].isoformat(), "end": days[-1].isoformat(), "rows": len(frame),
                   "matrix_shape": list(matrix.shape), "nnz": int(matrix.nnz)},
        "bare_s": bare, "fit_model_s": fm, "fit_model_als_s": fm_als, "median": {"bare": bare_s, "fit_model": fm_s, "fit_model_als": fm_als_s},
        "ratio_fit_model": ratio, "ratio_als_call": fm_als_s / bare_s,
        "fit_model_outside_als_s": outside_s, "ratio_outside_als_estimate": 1.0 + outside_s / bare_s, "target": TARGET, "pass": ratio <= TARGET,
        "whole": whole, "candidate_model_asset_s": asset_s, "read_window_s": read_s, "rows": rows,
        "elapsed_s": round(time.perf_counter() - started, 1),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
