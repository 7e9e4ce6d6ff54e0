"""Peak memory (RSS): a daily cycle at 1M events/day, and the service with the Online Retail model loaded.

    python benchmarks/memory.py [--json OUT] [--events 1000000] [--cycle-json OVERHEAD.json] [--skip-cycle]
                                [--skip-service] [--or-path PATH] [--or-home HOME] [--requests 200] [--quick]

1. *Daily cycle*: one ``daily_ingest`` + ``daily_training`` through Dagster (in-process executor, fixed
   candidate parameters, 28 days of history at ``--events`` per day and a champion; exactly the cycle of
   benchmarks/factory_overhead.py) in its own process; peak RSS = that process's ``ru_maxrss``.  With
   ``--cycle-json`` the figure is taken from a factory_overhead.py result instead of running it again.
   Target: <= 2 GiB at 1M events/day.
2. *Service*: a FACTORY_HOME with a champion trained by the factory on Online Retail
   (``factory run --source online_retail --path ../shared/data/online-retail/online_retail.parquet
   --start 2011-07-31 --end 2011-11-30``, as the README: 123 ingest runs, 7 candidates with the default search
   and the 90-day purchase history; cached under the bench cache), then ``factory serve`` in a child process; after ``/readyz`` and
   ``--requests`` GET /recommendations/<user> (known users of the window and a few unknown ones), the server's
   ``/proc/PID/status`` ``VmHWM`` (peak RSS) and ``VmRSS``.  Target: <= 500 MiB.  Skipped with a message
   when the data file is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
from service_latency import free_port, server_rss_mib, wait_ready  # noqa: E402  (the latency benchmark's helpers)

CYCLE_TARGET_MIB = 2048
SERVICE_TARGET_MIB = 500
# the README's Online Retail run: 90 days of purchase history (the ranker's history_days) before the last window
OR_RANGE = ("2011-07-31", "2011-11-30")
OR_LAST_WINDOW_START = "2011-11-03"


def cycle_rss(events: int, cache: Path, candidate: dict) -> dict:
    shop = c.shop(events)
    days = [c.FIRST_DAY + timedelta(days=i) for i in range(28)]
    home, setup = c.prepared_home(cache, shop, days, days[-1], candidate)
    work = c.copy_home(home, cache / f"work_mem_{events}")
    r = c.measure_cycle_subprocess("in_process", work, shop, days[-1] + timedelta(days=1), candidate)
    return {"events_per_day": events, "seconds": r["seconds"], "candidate": candidate, "peak_rss_mib": r["rss"]["self_mib"],
            "children_rss_mib": r["rss"]["children_mib"], "success": r["success"], "source": "measured here"}


def cycle_rss_from(path: Path, events: int) -> dict | None:
    data = json.loads(path.read_text())
    for r in data.get("results", []):
        if r["events_per_day"] == events:
            return {"events_per_day": events, "seconds": r["in_process"]["median_s"], "candidate": r.get("candidate"),
                    "peak_rss_mib": r["in_process"]["peak_rss_self_mib"], "source": f"{path} (factory_overhead)"}
    return None


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def or_champion_home(or_path: Path, home: Path) -> dict:
    done = home / ".or_champion.json"
    if done.exists():
        return json.loads(done.read_text())
    home.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    env = {**os.environ, "FACTORY_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    env.pop("FACTORY_EXECUTOR", None)
    proc = subprocess.run([str(Path(c.PYTHON).parent / "factory"), "run", "--source", "online_retail", "--path", str(or_path),
                           "--start", OR_RANGE[0], "--end", OR_RANGE[1], "--home", str(home), "--json"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0 and not proc.stdout.strip():
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"factory run on Online Retail exited {proc.returncode}")
    summary = json.loads(proc.stdout)
    info = {"seconds": round(time.perf_counter() - t, 1), "served_model": summary["served_model"],
            "trained": summary["trained"], "range": summary["range"], "rc": proc.returncode}
    if summary["served_model"] is None:
        raise RuntimeError(f"no champion after factory run on Online Retail: {summary['trained']}")
    done.write_text(json.dumps(info))
    return info


def service_rss(or_path: Path, home: Path, n_requests: int) -> dict:
    info = or_champion_home(or_path, home)
    # users to ask for: customers of the window (from the warehouse), plus unknown ones (fallback)
    import duckdb

    con = duckdb.connect(str(home / "online_retail" / "warehouse.duckdb"), read_only=True)
    users = [u for (u,) in con.execute("SELECT DISTINCT user_id FROM user_item_daily WHERE day >= ? ORDER BY user_id LIMIT ?",
                                       [OR_LAST_WINDOW_START, n_requests]).fetchall()]
    con.close()
    users += [f"unknown-{i}" for i in range(max(1, n_requests // 10))]
    port = free_port()
    env = {**os.environ, "FACTORY_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    server = subprocess.Popen([str(Path(c.PYTHON).parent / "factory"), "serve", "--home", str(home), "--source", "online_retail",
                               "--port", str(port), "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_ready(base, server)
        after_load = server_rss_mib(server.pid)
        statuses = {}
        for u in users:
            code = _get(f"{base}/recommendations/{u}")[0]
            statuses[code] = statuses.get(code, 0) + 1
        after = server_rss_mib(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return {"champion": info, "ready_s": round(ready_s, 2), "requests": len(users), "statuses": statuses,
            "rss_after_load_mib": after_load.get("rss_mib"), "rss_mib": after.get("rss_mib"),
            "peak_rss_mib": after.get("peak_rss_mib")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--events", type=float, default=1_000_000)
    p.add_argument("--cycle-json", help="take the cycle's peak RSS from this factory_overhead.py JSON")
    p.add_argument("--model", choices=("ranker", "blend"), default="blend", help="candidate of a 1M cycle run here")
    p.add_argument("--skip-cycle", action="store_true")
    p.add_argument("--skip-service", action="store_true", help="only the daily cycle (no Online Retail champion, no server)")
    p.add_argument("--or-path", default=str(c.OR_PATH))
    p.add_argument("--or-home", default=None, help="FACTORY_HOME for the Online Retail champion (default: bench cache)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="cycle at 20k events/day (its target does not apply)")
    p.add_argument("--cache", default=str(c.default_cache()))
    args = p.parse_args(argv)
    cache = Path(args.cache)
    events = 20_000 if args.quick else int(args.events)
    started = time.perf_counter()
    rows, out = [], {"benchmark": "memory", "machine": c.machine_info()}
    if not args.skip_cycle:
        cyc = cycle_rss_from(Path(args.cycle_json), events) if args.cycle_json else None
        cyc = cyc or cycle_rss(events, cache, c.FIXED_CANDIDATE if args.model == "ranker" or events < 1_000_000 else c.FIXED_BLEND)
        out["cycle"] = cyc
        applies = events >= 1_000_000
        kind = (cyc.get("candidate") or {}).get("model_kind", "?")
        rows.append({"what": f"daily cycle at {events} events/day (in-process Dagster, {kind})", "peak RSS MiB": cyc["peak_rss_mib"],
                     "target MiB": CYCLE_TARGET_MIB if applies else "(1M only)",
                     "pass": ("pass" if cyc["peak_rss_mib"] <= CYCLE_TARGET_MIB else "MISS") if applies else ""})
    or_path = Path(args.or_path)
    if args.skip_service:
        out["service"] = {"skipped": "--skip-service"}
    elif not or_path.exists():
        print(f"Online Retail data not found at {or_path}: service memory skipped")
        out["service"] = {"skipped": f"{or_path} not found"}
    else:
        # keyed by the model code: a champion saved by other code may not load (see _common.model_fingerprint)
        default_home = cache / f"or_champion_{c.model_fingerprint({'source': 'online_retail', 'range': OR_RANGE})}"
        svc = service_rss(or_path, Path(args.or_home) if args.or_home else default_home, args.requests)
        out["service"] = svc
        rows.append({"what": f"factory serve, Online Retail champion v{svc['champion']['served_model']['version']}, "
                             f"after {svc['requests']} requests", "peak RSS MiB": svc["peak_rss_mib"],
                     "target MiB": SERVICE_TARGET_MIB, "pass": "pass" if svc["peak_rss_mib"] <= SERVICE_TARGET_MIB else "MISS"})
    c.print_table(rows, "Peak memory (RSS)")
    out["targets"] = {"cycle_mib": CYCLE_TARGET_MIB, "service_mib": SERVICE_TARGET_MIB}
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    c.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
