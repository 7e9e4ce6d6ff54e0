"""Factory overhead: one daily cycle through Dagster vs the same asset bodies called in a plain script.

    python benchmarks/factory_overhead.py [--json OUT] [--sizes 100000,1000000] [--repeats 3] [--mp-repeats 1]
                                          [--no-multiprocess] [--quick]

A *daily cycle* is one new UTC day D after 28 days of stored history (the window): ``daily_ingest`` (raw_events
with its 4 checks, user_item_daily, item_daily, user_features, item_features, online_features) then
``daily_training`` (training_window + window_complete, candidate_model + its 3 blocking gates, served_model +
champion_verified, shadow_evaluation).  History (days D-28 .. D-1) is written once per size through the
library's writers and a champion is trained on D-1, so the measured candidate is compared with a champion as in
steady state; that setup is not measured.  Every measurement starts from a fresh copy of that FACTORY_HOME and
runs in its own process (peak RSS = that process's ``ru_maxrss``; the multiprocess executor's step processes are
reported as ``children``).  Imports (Dagster, the code location, implicit, sklearn) and the Dagster instance's
start-up are done before the clock in every mode: a long-lived ``factory run`` pays them once.

Modes: ``plain`` (asset bodies called directly, see benchmarks/_common.py), ``in_process`` (the code location's
jobs with ``execute_in_process`` on a sqlite DagsterInstance seeded with the project's dagster.yaml -- exactly
what ``factory run`` does), ``multiprocess`` (the same jobs with ``multiprocess_executor`` through
``dagster.execute_job``; reported, no target).  Candidate parameters are fixed (``FIXED_CANDIDATE``: the default
learned ranker, search_budget=1 so only the default ALS configuration, ranker_c=0.1 so no C search): the cycle is
deterministic.  Sizes >= ``--large-from`` (1M) use ``--large-model`` (default ``blend`` at a fixed ALS weight,
``_common.FIXED_BLEND``): the ranker's training at 1M events/day takes minutes and over 3 GiB (see the
report), too long to repeat in a benchmark on 2 cores; ``--large-model ranker`` measures it anyway.  The shop is the simulator's default 3000 users x 800 items; only ``events_per_day`` changes.

Targets (issue 8): in-process / plain <= 1.15 (median of ``--repeats``); peak RSS of a cycle at 1M events/day
<= 2 GiB.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

OVERHEAD_TARGET = 1.15
RSS_TARGET_MIB = 2048


def measure_size(events: int, repeats: int, mp_repeats: int, cache: Path, candidate: dict, window: int = 28) -> dict:
    shop = c.shop(events)
    days = [c.FIRST_DAY + timedelta(days=i) for i in range(window)]
    day = days[-1] + timedelta(days=1)
    t = time.perf_counter()
    home, info = c.prepared_home(cache, shop, days, days[-1], candidate)
    info["prepare_wall_s"] = round(time.perf_counter() - t, 1)
    runs: dict[str, list[dict]] = {"plain": [], "in_process": [], "multiprocess": []}
    order = []
    for _ in range(repeats):  # interleaved so slow drift of the machine's load hits both modes alike
        order += ["plain", "in_process"]
    order += ["multiprocess"] * mp_repeats
    for mode in order:
        work = c.copy_home(home, cache / f"work_{events}")
        r = c.measure_cycle_subprocess(mode, work, shop, day, candidate)
        ingest_ok = r["detail"].get("daily_ingest", {}).get("success", True)
        if not r["success"] and (not ingest_ok or mode == "plain"):
            raise RuntimeError(f"{mode} cycle at {events}/day failed: {r}")
        if not r["success"]:  # a failed blocking gate fails Dagster's run: a rejected candidate, as in the plain cycle
            print(f"  note: {mode} daily_training run failed (a blocking gate failed: the candidate was rejected)", flush=True)
        runs[mode].append(r)
        print(f"  {events}/day {mode}: {r['seconds']:.2f} s, peak RSS {r['rss']['self_mib']:.0f} MiB", flush=True)
    out = {"events_per_day": events, "day": day.isoformat(), "candidate": candidate, "setup": info, "runs": runs}
    for mode, rs in runs.items():
        if rs:
            out[mode] = {"median_s": c.median([r["seconds"] for r in rs]), "all_s": [round(r["seconds"], 3) for r in rs],
                         "peak_rss_mib": max(max(r["rss"]["self_mib"], r["rss"]["children_mib"]) for r in rs),
                         "peak_rss_self_mib": max(r["rss"]["self_mib"] for r in rs)}
    plain = out["plain"]["median_s"]
    out["ratio_in_process"] = out["in_process"]["median_s"] / plain
    out["ratio_multiprocess"] = out["multiprocess"]["median_s"] / plain if runs["multiprocess"] else None
    out["verdict"] = runs["plain"][0]["detail"]["verdict"]
    out["dagster_runs_success"] = {m: [r["success"] for r in rs] for m, rs in runs.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--sizes", default="100000,1000000", help="events/day, comma separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mp-repeats", type=int, default=1, help="multiprocess-executor cycles per size (0 = skip)")
    p.add_argument("--no-multiprocess", action="store_true")
    p.add_argument("--quick", action="store_true", help="20k events/day, 1 repeat (smoke run)")
    p.add_argument("--large-model", choices=("ranker", "blend"), default="blend",
                   help="candidate of the sizes >= --large-from (the ranker at 1M events/day takes minutes per cycle)")
    p.add_argument("--large-from", type=float, default=1_000_000)
    p.add_argument("--large-repeats", type=int, default=2, help="repeats of the sizes >= --large-from")
    p.add_argument("--cache", default=str(c.default_cache()), help="where prepared homes are kept")
    args = p.parse_args(argv)
    sizes = [20_000] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    mp = 0 if args.no_multiprocess else args.mp_repeats
    started = time.perf_counter()
    def candidate(n: int) -> dict:
        return c.FIXED_BLEND if n >= args.large_from and args.large_model == "blend" else c.FIXED_CANDIDATE

    results = []
    for n in sizes:  # the JSON is rewritten after each size, so a failure later keeps what was measured
        results.append(measure_size(n, min(repeats, args.large_repeats) if n >= args.large_from else repeats, mp,
                                    Path(args.cache), candidate(n)))
        c.write_json(args.json, {"benchmark": "factory_overhead", "partial": True, "results": results})
    rows = []
    for r in results:
        rows.append({
            "events/day": r["events_per_day"], "plain s": r["plain"]["median_s"], "in-process s": r["in_process"]["median_s"],
            "ratio": r["ratio_in_process"], "target": f"<= {OVERHEAD_TARGET}",
            "pass": "pass" if r["ratio_in_process"] <= OVERHEAD_TARGET else "MISS",
            "multiproc s": r["multiprocess"]["median_s"] if "multiprocess" in r else None,
            "mp ratio": r["ratio_multiprocess"],
            "peak RSS MiB (plain/in-proc)": f"{r['plain']['peak_rss_mib']:.0f}/{r['in_process']['peak_rss_self_mib']:.0f}",
            "repeats": len(r["runs"]["plain"]), "model": r["candidate"]["model_kind"], "verdict": r["verdict"],
        })
    c.print_table(rows, "Factory overhead: one daily cycle (ingest + features + window + candidate + promotion), median s")
    for r in results:
        steps = r["runs"]["plain"][0]["detail"]["steps"]
        c.print_table([{k: round(v, 3) for k, v in steps.items()}], f"plain cycle steps at {r['events_per_day']}/day (s)")
    memory = [{"events/day": r["events_per_day"], "peak RSS MiB": r["in_process"]["peak_rss_self_mib"],
               "target": RSS_TARGET_MIB if r["events_per_day"] >= 1_000_000 else None} for r in results]
    c.write_json(args.json, {
        "benchmark": "factory_overhead", "machine": c.machine_info(), "fixed_candidate": c.FIXED_CANDIDATE,
        "targets": {"ratio_in_process": OVERHEAD_TARGET, "peak_rss_mib_at_1m": RSS_TARGET_MIB},
        "results": results, "memory": memory, "elapsed_s": round(time.perf_counter() - started, 1),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
