"""Incremental cost: one new day with 30 vs 365 days of history already stored.

    python benchmarks/incremental.py [--json OUT] [--events 20000] [--short 30] [--long 365] [--repeats 3] [--quick]

Two FACTORY_HOMEs hold the simulated days ``D-30 .. D-1`` and ``D-365 .. D-1`` (same simulator seed, so the
last 30 days -- and therefore the 28-day window of D -- are identical in both), written through the library's
writers (benchmarks/_common.py ``ingest_history_fast``: raw_events + the four daily views per day) and with a
champion trained on D-1 (setup, not measured).  The measured new day goes through Dagster exactly as ``factory
run`` does: ``daily_ingest`` then ``daily_training`` for D with ``execute_in_process`` (raw_events + checks,
the feature views, online_features, training_window, candidate_model with its gates, served_model,
shadow_evaluation), fixed candidate parameters (``_common.FIXED_CANDIDATE``), each repeat on a fresh copy of
the prepared home, in its own process.  One plain (no Dagster) cycle per home gives the per-step breakdown, to
show where a difference would come from.

Target (issue 8): median(365 days) / median(30 days) <= 1.10 -- flat, because every asset reads only its day or
its window.  Caveat: the Dagster instance is fresh in both homes (history was not written through Dagster), so
this measures the warehouse side, not the growth of Dagster's own run/event storage.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

TARGET = 1.10
# The new day: late enough that 365 days of history fit after the partitions' start, and before today.
NEW_DAY = c.FIRST_DAY + timedelta(days=400)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--events", type=float, default=20_000)
    p.add_argument("--short", type=int, default=30)
    p.add_argument("--long", type=int, default=365)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="5k events/day, 30 vs 120 days, 1 repeat")
    p.add_argument("--cache", default=str(c.default_cache()))
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.long, args.repeats = 5_000, 120, 1
    cache = Path(args.cache)
    shop = c.shop(args.events)
    started = time.perf_counter()
    homes, setup = {}, {}
    for n in (args.short, args.long):
        days = [NEW_DAY - timedelta(days=n - i) for i in range(n)]
        t = time.perf_counter()
        homes[n], setup[n] = c.prepared_home(cache, shop, days, days[-1], c.FIXED_CANDIDATE)
        setup[n]["prepare_wall_s"] = round(time.perf_counter() - t, 1)
        print(f"  history {n} days: {setup[n]}", flush=True)
    runs: dict[int, list[dict]] = {args.short: [], args.long: []}
    plain: dict[int, dict] = {}
    for _ in range(args.repeats):
        for n in (args.short, args.long):
            work = c.copy_home(homes[n], cache / f"work_incr_{n}")
            r = c.measure_cycle_subprocess("in_process", work, shop, NEW_DAY, c.FIXED_CANDIDATE)
            if not r["success"]:
                raise RuntimeError(f"cycle with {n} days of history failed: {r}")
            runs[n].append(r)
            print(f"  {n} days of history: {r['seconds']:.2f} s ({ {k: round(v['seconds'], 2) for k, v in r['detail'].items()} })", flush=True)
    for n in (args.short, args.long):
        work = c.copy_home(homes[n], cache / f"work_incr_{n}")
        plain[n] = c.measure_cycle_subprocess("plain", work, shop, NEW_DAY, c.FIXED_CANDIDATE)
    med = {n: c.median([r["seconds"] for r in rs]) for n, rs in runs.items()}
    job_med = {n: {job: c.median([r["detail"][job]["seconds"] for r in rs]) for job in ("daily_ingest", "daily_training")}
               for n, rs in runs.items()}
    ratio = med[args.long] / med[args.short]
    rows = [{"history days": n, "stored MiB": setup[n]["mib"], "cycle s (median)": med[n],
             "daily_ingest s": job_med[n]["daily_ingest"], "daily_training s": job_med[n]["daily_training"],
             "all s": ", ".join(f"{r['seconds']:.2f}" for r in runs[n])} for n in (args.short, args.long)]
    c.print_table(rows, f"Incremental cost: one new day ({NEW_DAY}) at {int(args.events)} events/day, through Dagster (in-process)")
    print(f"\nratio {args.long}/{args.short} days: {ratio:.3f} (target <= {TARGET}: {'pass' if ratio <= TARGET else 'MISS'})")
    steps = sorted(plain[args.short]["detail"]["steps"])
    c.print_table([{"step": s, f"{args.short} d": plain[args.short]["detail"]["steps"][s],
                    f"{args.long} d": plain[args.long]["detail"]["steps"][s],
                    "ratio": plain[args.long]["detail"]["steps"][s] / max(plain[args.short]["detail"]["steps"][s], 1e-9)}
                   for s in steps], "plain cycle, per step (s, one run each)")
    c.write_json(args.json, {
        "benchmark": "incremental", "machine": c.machine_info(), "events_per_day": args.events, "new_day": NEW_DAY.isoformat(),
        "history_days": [args.short, args.long], "setup": {str(k): v for k, v in setup.items()},
        "median_s": {str(k): v for k, v in med.items()}, "job_median_s": {str(k): v for k, v in job_med.items()},
        "runs": {str(k): v for k, v in runs.items()}, "plain": {str(k): v for k, v in plain.items()},
        "ratio": ratio, "target": TARGET, "pass": ratio <= TARGET, "elapsed_s": round(time.perf_counter() - started, 1),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
