"""Run the issue-8 benchmarks (each in its own process), print one summary table, write one JSON.

    python benchmarks/run_all.py --json OUT [--quick] [--only factory_overhead,ingest_throughput,...]

Runs benchmarks/factory_overhead.py, ingest_throughput.py, incremental.py, training_cost.py and memory.py
(memory.py reuses factory_overhead's 1M-events cycle instead of running it again).  Each writes its own JSON
next to OUT (``OUT.<name>.json``); OUT gets the summary (figure, target, pass/miss per line), every
benchmark's JSON, the machine (cores, versions, load average before/after) and the run times.  ``--quick``
passes ``--quick`` to each (smaller sizes: a smoke run; the 1M-events and 365-day targets do not apply).
Not part of the test suite.  Prepared histories are cached in ``$FACTORY_BENCH_CACHE`` (default
``/tmp/factory_bench_cache``); delete it to re-prepare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

BENCHMARKS = ("factory_overhead", "ingest_throughput", "incremental", "training_cost", "memory")


def summary_rows(results: dict, quick: bool) -> list[dict]:
    rows = []

    def add(what, figure, target=None, ok=None, note=""):
        rows.append({"benchmark": what, "figure": figure, "target": target or "",
                     "result": "" if ok is None else ("pass" if ok else "MISS"), "note": note})

    fo = results.get("factory_overhead")
    if fo:
        for r in fo["results"]:
            n = r["events_per_day"]
            add(f"overhead {n}/day in-process / plain", round(r["ratio_in_process"], 3), "<= 1.15", r["ratio_in_process"] <= 1.15,
                f"{r['in_process']['median_s']:.2f} s vs {r['plain']['median_s']:.2f} s (median of {len(r['runs']['plain'])})")
            if r.get("ratio_multiprocess") is not None:
                add(f"overhead {n}/day multiprocess / plain", round(r["ratio_multiprocess"], 3), "(none)", None,
                    f"{r['multiprocess']['median_s']:.2f} s")
    ing = results.get("ingest_throughput")
    if ing:
        for r in ing["results"]:
            e = r["events_per_s"]
            applies = r["events_per_day"] >= 1_000_000
            add(f"ingest {r['events_per_day']}/day: store path events/s", round(e["store_path"]),
                f">= {r['target_store_path_events_per_s']:,}", r["meets_target"] if applies else None,
                f"duckdb bulk insert {e['duckdb_bulk_insert']:.0f}/s (store/duckdb {r['ratio_store_path_vs_duckdb']:.2f}x); "
                f"two-step {e['two_step']:.0f}/s; asset end to end {e['asset_end_to_end']:.0f}/s")
    inc = results.get("incremental")
    if inc:
        a, b = inc["history_days"]
        add(f"incremental {b} vs {a} days of history", round(inc["ratio"], 3), "<= 1.10", None if quick and b < 365 else inc["pass"],
            f"{inc['median_s'][str(b)]:.2f} s vs {inc['median_s'][str(a)]:.2f} s at {int(inc['events_per_day'])}/day")
    tr = results.get("training_cost")
    if tr:
        add("training: fit_model / bare implicit fit", round(tr["ratio_fit_model"], 3), "<= 1.10", tr["pass"],
            f"{tr['median']['fit_model']:.3f} s vs {tr['median']['bare']:.3f} s; implicit call inside {tr['ratio_als_call']:.3f}x")
        for label, w in tr["whole"].items():
            add(f"training: {label} / bare fit", round(w["seconds"] / tr["median"]["bare"], 2), "(none)", None,
                f"{w['seconds']:.2f} s, {w['als_fits']} ALS fits ({w['als_seconds']:.2f} s)")
    mem = results.get("memory")
    if mem:
        cyc = mem.get("cycle")
        if cyc:
            applies = cyc["events_per_day"] >= 1_000_000
            add(f"peak RSS daily cycle {cyc['events_per_day']}/day (MiB)", round(cyc["peak_rss_mib"]), "<= 2048",
                (cyc["peak_rss_mib"] <= 2048) if applies else None, cyc.get("source", ""))
        svc = mem.get("service", {})
        if "peak_rss_mib" in svc:
            add("peak RSS factory serve, Online Retail champion (MiB)", round(svc["peak_rss_mib"]), "<= 500",
                svc["peak_rss_mib"] <= 500, f"after {svc['requests']} requests; RSS after load {svc['rss_after_load_mib']:.0f} MiB")
        elif svc:
            add("peak RSS factory serve (Online Retail)", "skipped", "<= 500", None, svc.get("skipped", ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    out = Path(args.json)
    machine_before = c.machine_info()
    started = time.perf_counter()
    results, times, failures = {}, {}, {}
    for name in names:
        path = out.with_name(f"{out.stem}.{name}.json")
        cmd = [c.PYTHON, str(c.BENCH / f"{name}.py"), "--json", str(path)] + (["--quick"] if args.quick else [])
        if name == "memory" and "factory_overhead" in results:
            cmd += ["--cycle-json", str(out.with_name(f"{out.stem}.factory_overhead.json"))]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd)
        times[name] = round(time.perf_counter() - t, 1)
        if proc.returncode == 0 and path.exists():
            results[name] = json.loads(path.read_text())
        else:
            failures[name] = proc.returncode
            print(f"!!! {name} exited {proc.returncode}", flush=True)
    rows = summary_rows(results, args.quick)
    c.print_table(rows, "Summary (issue 8 benchmarks)" + (" -- QUICK smoke run, sizes reduced" if args.quick else ""))
    c.print_table([{"benchmark": k, "seconds": v} for k, v in times.items()] + [{"benchmark": "total", "seconds": round(time.perf_counter() - started, 1)}],
                  "run times")
    c.write_json(str(out), {"quick": args.quick, "summary": rows, "results": results, "failures": failures,
                            "run_times_s": times, "total_s": round(time.perf_counter() - started, 1),
                            "machine_before": machine_before, "machine_after": c.machine_info()})
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
