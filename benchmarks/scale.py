"""Scale: one daily cycle at growing volume (events/day, and users and items with it).

    python benchmarks/scale.py [--json OUT] [--plot PNG] [--sizes 100000,1000000,3000000,10000000]
                               [--model default|fixed] [--gpu] [--timeout 3600]
    python benchmarks/scale.py --cluster .cluster/env [--cluster-events 100000] [--json OUT]

For each size: a FACTORY_HOME with 28 days of simulated history (the window) and a champion trained on its last
day (prepared once through the library's writers and cached in ``$FACTORY_BENCH_CACHE``, see
``_common.prepared_home``), copied, then the next day's cycle through Dagster in a fresh process, exactly what
``factory run`` does for one day: ``daily_ingest`` (the simulator's day, validation, ``raw_events`` and the
feature views) and ``daily_training`` (window, candidate with its blocking gates, served model).  Wall time is
the two jobs' (instance start-up and imports excluded); peak RSS is the worker process's ``ru_maxrss``.

Shop at ``E`` events/day (the simulator's default is 3,000 users x 800 items at 20,000 events/day; the density
per user is kept, the catalogue grows with the square root): ``n_users = 0.15 E``, ``n_items = 800 sqrt(E /
20,000)``.  ``--model default`` trains the candidate with the code's defaults (the learned ranker and its
search: what a user gets); ``--model fixed`` with the search off (``_common.FIXED_CANDIDATE``).

Stages (seconds, from the run's step stats and ``candidate_model``'s ``stage_seconds`` metadata):
``ingest_s`` = ``raw_events``; ``features_s`` = the feature views and ``behaviour_drift``; ``candidate_s`` =
``training_window`` + ``candidate_model`` less its gates; ``gates_s`` = the champion's evaluation and the three
gates inside ``candidate_model``; ``promotion_s`` = ``served_model`` and its check, plus ``shadow_evaluation``.

``--gpu``: also fit the last size's window with implicit's ALS on the CPU and, when ``implicit.gpu.HAS_CUDA``,
on CUDA (same matrix, factors and iterations), recording both times and their ratio; without a GPU it records
why not.

``--cluster ENV_FILE`` (the env file of ``deploy/local-cluster/up``): a 28-day backfill (``factory run`` of 28
days: every raw and feature partition, then the one candidate with a full window) at ``--cluster-events``
events/day, three times on fresh homes: in process on the DuckDB file (the default), in process on the Parquet
storage, and on the cluster (``--executor celery``, Parquet storage, ``FACTORY_PARALLEL_RUNS`` runs in flight).
``cluster`` = ``{"workers", "in_process_s", "in_process_parquet_s", "cluster_s", "speedup"}`` with ``speedup =
in_process_s / cluster_s``, plus the served model's sha256 of each (equal: the same model).  Without
``--sizes`` only the cluster is measured and an existing ``--json`` file keeps its ``sizes`` and ``targets``.

Targets (2 cores): 1M events/day with the default model in <= 60 s; 10M completes with peak RSS <= 8 GiB;
``wall_s`` at 10M <= 10 x at 1M.  Not part of the test suite.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

DEFAULT_SIZES = (100_000, 1_000_000, 3_000_000, 10_000_000)
WINDOW = 28
TARGET_1M_S = 60.0
TARGET_10M_RSS_MIB = 8 * 1024
FEATURE_STEPS = ("user_item_daily", "item_daily", "user_features", "item_features", "online_features", "behaviour_drift")
PROMOTION_STEPS = ("served_model", "served_model_champion_verified", "shadow_evaluation")


def scaled_shop(events_per_day: int) -> dict:
    """Simulator options at ``events_per_day``: users and items grow with it (module docstring)."""
    return c.shop(events_per_day, n_users=max(3000, round(0.15 * events_per_day)),
                  n_items=max(800, round(800 * math.sqrt(events_per_day / 20_000))))


def stages(detail: dict) -> dict:
    """The issue's stage split of one measured cycle (``_common.dagster_cycle``'s detail)."""
    steps = {**detail["daily_ingest"]["steps"], **detail["daily_training"]["steps"]}
    cand = detail["daily_training"].get("candidate_stages") or {}
    gates = float(cand.get("gates", 0.0))
    return {
        "ingest_s": round(steps.get("raw_events", 0.0), 2),
        "features_s": round(sum(steps.get(s, 0.0) for s in FEATURE_STEPS), 2),
        "candidate_s": round(steps.get("training_window", 0.0) + steps.get("candidate_model", 0.0) - gates, 2),
        "gates_s": round(gates, 2),
        "promotion_s": round(sum(steps.get(s, 0.0) for s in PROMOTION_STEPS), 2),
    }


def measure(events: int, cache: Path, candidate: dict, timeout: float) -> dict:
    shop = scaled_shop(events)
    days = [c.FIRST_DAY + timedelta(days=i) for i in range(WINDOW)]
    t = time.perf_counter()
    home, info = c.prepared_home(cache, shop, days, days[-1], candidate)
    prep_s = time.perf_counter() - t
    work = c.copy_home(home, cache / f"work_scale_{events}")
    r = c.measure_cycle_subprocess("in_process", work, shop, days[-1] + timedelta(days=1), candidate, timeout=timeout)
    row = {
        "events_per_day": events,
        "n_users": shop["n_users"],
        "n_items": shop["n_items"],
        "wall_s": round(r["seconds"], 2),
        "peak_rss_mib": round(r["rss"]["self_mib"], 1),
        "stages": stages(r["detail"]),
        "success": r["success"],
        "steps": {job: d["steps"] for job, d in r["detail"].items()},
        "candidate_stages": r["detail"]["daily_training"].get("candidate_stages"),
        "history": info.get("history"),
        "champion": info.get("champion"),
        "prepare_s": round(prep_s, 1),
    }
    return row


CLUSTER_DAYS = 28

_CLUSTER_RUN = """
import argparse, json, sys
from factory_assets import cli
args = argparse.Namespace(command="run", source="simulator", path=None, start=sys.argv[1], end=sys.argv[2],
                          backtest=False, home=sys.argv[3], json=True, verbose=False)
cli.check_settings("simulator")
print(json.dumps(cli.run(args, simulator=json.loads(sys.argv[4])), default=str))
"""


def read_env_file(path: Path) -> dict[str, str]:
    """``export NAME=value`` lines of the cluster's env file."""
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            env[name] = value
    return env


def cluster_speedup(env_file: Path, events: int, work: Path, timeout: float) -> dict:
    """The 28-day backfill in process (DuckDB file, then Parquet) and on the cluster; wall seconds each."""
    import json
    import os
    import shutil
    import subprocess

    cluster = read_env_file(env_file)
    shop = scaled_shop(events)
    start = c.FIRST_DAY
    end = start + timedelta(days=CLUSTER_DAYS - 1)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "FACTORY_"))}
    base |= {"OPENBLAS_NUM_THREADS": "1", "FACTORY_WINDOW_DAYS": str(WINDOW)}
    modes = {
        "in_process": {**base, "FACTORY_STORAGE": "duckdb"},
        "in_process_parquet": {**base, "FACTORY_STORAGE": "parquet"},
        "cluster": {**base, **cluster, "FACTORY_STORAGE": "parquet", "FACTORY_EXECUTOR": "celery"},
    }
    out: dict = {"workers": int(cluster.get("FACTORY_CLUSTER_WORKERS", 0)), "events_per_day": events,
                 "days": CLUSTER_DAYS, "n_users": shop["n_users"], "n_items": shop["n_items"],
                 "parallel_runs": int(os.environ.get("FACTORY_PARALLEL_RUNS", 4))}
    for mode, env in modes.items():
        home = work / mode
        shutil.rmtree(home, ignore_errors=True)
        env = {**env, "FACTORY_HOME": str(home)}
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _CLUSTER_RUN, start.isoformat(), end.isoformat(), str(home),
                               json.dumps(shop)], env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t
        if done.returncode != 0:
            raise RuntimeError(f"{mode}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        failed = [r for r in summary["runs"] if r["outcome"] not in ("ok", "gate")]
        if failed:
            raise RuntimeError(f"{mode}: {len(failed)} runs failed, first: {failed[0]}")
        out[f"{mode}_s"] = round(wall, 1)
        out[f"{mode}_runs"] = len(summary["runs"])
        out[f"{mode}_served_sha256"] = (summary["served_model"] or {}).get("sha256")
        print(f"cluster benchmark: {mode}: {wall:.1f} s, {len(summary['runs'])} runs", flush=True)
    out["speedup"] = round(out["in_process_s"] / out["cluster_s"], 2)
    out["speedup_over_parquet_in_process"] = round(out["in_process_parquet_s"] / out["cluster_s"], 2)
    out["same_model"] = len({out[f"{m}_served_sha256"] for m in modes}) == 1
    return out


def gpu_ratio(events: int, cache: Path) -> dict:
    """CPU vs CUDA ALS on the window of the prepared ``events`` home (same matrix and parameters)."""
    try:
        import implicit.gpu

        has_cuda = bool(implicit.gpu.HAS_CUDA)
    except ImportError as exc:  # pragma: no cover - implicit is a dependency
        return {"available": False, "reason": str(exc)}
    if not has_cuda:
        return {"available": False, "reason": "implicit.gpu.HAS_CUDA is False (no CUDA build of implicit or no GPU)"}
    from implicit.als import AlternatingLeastSquares

    import duckdb
    from training_cost import confidence_matrix  # the ALS confidence matrix of fit_model (no drift re-weighting)

    from factory_assets.feature_store import store
    from factory_assets.ml.recsys.model import ModelParams

    shop = scaled_shop(events)
    days = [c.FIRST_DAY + timedelta(days=i) for i in range(WINDOW)]
    home, _ = c.prepared_home(cache, shop, days, None, {})
    con = duckdb.connect(str(home / "simulator" / "warehouse.duckdb"), read_only=True)
    frame = store.read_window(con, days[0], days[-1])
    con.close()
    params = ModelParams()
    matrix = confidence_matrix(frame, days[-1], params)
    out = {"available": True, "events_per_day": events, "shape": list(matrix.shape), "nnz": int(matrix.nnz)}
    for kind, gpu in (("cpu", False), ("gpu", True)):
        model = AlternatingLeastSquares(factors=params.factors, regularization=params.regularization, alpha=params.alpha,
                                        iterations=params.iterations, random_state=params.seed, use_gpu=gpu)
        t = time.perf_counter()
        model.fit(matrix, show_progress=False)
        out[f"{kind}_s"] = round(time.perf_counter() - t, 3)
    out["speedup"] = round(out["cpu_s"] / out["gpu_s"], 2)
    return out


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [r for r in rows if r.get("success")]
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    x = [r["events_per_day"] for r in done]
    bottom = [0.0] * len(done)
    for stage in ("ingest_s", "features_s", "candidate_s", "gates_s", "promotion_s"):
        h = [r["stages"][stage] for r in done]
        ax1.bar(range(len(done)), h, bottom=bottom, label=stage[:-2])
        bottom = [b + v for b, v in zip(bottom, h)]
    ax1.set_xticks(range(len(done)), [f"{v / 1e6:g}M" for v in x])
    ax1.set_xlabel("events/day")
    ax1.set_ylabel("daily cycle, wall seconds")
    ax1.legend(fontsize=7)
    ax2.plot(x, [r["peak_rss_mib"] / 1024 for r in done], marker="o")
    ax2.axhline(TARGET_10M_RSS_MIB / 1024, color="grey", linestyle="--", linewidth=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("events/day")
    ax2.set_ylabel("peak RSS, GiB")
    fig.suptitle("One daily cycle on 2 cores (benchmarks/scale.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--plot", help="write the cost plot (PNG) here")
    p.add_argument("--sizes", help="events/day, comma separated (default: "
                   f"{','.join(str(s) for s in DEFAULT_SIZES)}; none when only --cluster is asked)")
    p.add_argument("--model", choices=("default", "fixed"), default="default")
    p.add_argument("--gpu", action="store_true", help="also time ALS on CUDA vs CPU on the largest size's window")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one measured cycle may take")
    p.add_argument("--cluster", metavar="ENV_FILE", help="also measure the 28-day backfill on the local cluster "
                   "whose env file this is (deploy/local-cluster/up writes .cluster/env)")
    p.add_argument("--cluster-events", type=int, default=100_000, help="events/day of the cluster benchmark")
    args = p.parse_args(argv)
    if args.cluster and not Path(args.cluster).is_file():
        p.error(f"--cluster: no env file at {args.cluster} (run deploy/local-cluster/up)")
    if args.cluster and args.cluster_events < 1000:
        p.error(f"--cluster-events: at least 1000 events/day, got {args.cluster_events}")
    sizes_text = args.sizes if args.sizes is not None else ("" if args.cluster else ",".join(map(str, DEFAULT_SIZES)))
    try:
        sizes = [int(float(s)) for s in sizes_text.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes: events/day as numbers separated by commas, got {args.sizes!r}")
    if (not sizes and not args.cluster) or (sizes and min(sizes) < 1000):
        p.error(f"--sizes: at least one size, each >= 1000 events/day, got {args.sizes!r}")
    candidate = {} if args.model == "default" else dict(c.FIXED_CANDIDATE)
    cache = c.default_cache()
    machine = c.machine_info()
    rows = []
    for events in sizes:
        try:
            rows.append(measure(events, cache, candidate, args.timeout))
        except Exception as exc:  # a size that does not fit is a result, not the end of the run
            rows.append({"events_per_day": events, "success": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        r = rows[-1]
        print(f"{events:>10} events/day: " + (f"{r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, {r['stages']}"
                                              if r.get("success") else f"FAILED {r.get('error', '')}"), flush=True)
    by = {r["events_per_day"]: r for r in rows if r.get("success")}
    targets = {}
    if 1_000_000 in by:
        targets["cycle_1m_s"] = {"figure": by[1_000_000]["wall_s"], "target": TARGET_1M_S,
                                 "pass": by[1_000_000]["wall_s"] <= TARGET_1M_S}
    if 10_000_000 in by:
        targets["rss_10m_mib"] = {"figure": by[10_000_000]["peak_rss_mib"], "target": TARGET_10M_RSS_MIB,
                                  "pass": by[10_000_000]["peak_rss_mib"] <= TARGET_10M_RSS_MIB}
        if 1_000_000 in by:
            ratio = by[10_000_000]["wall_s"] / by[1_000_000]["wall_s"]
            targets["wall_10m_over_1m"] = {"figure": round(ratio, 2), "target": 10.0, "pass": ratio <= 10.0}
    elif 10_000_000 in sizes:
        targets["rss_10m_mib"] = {"figure": None, "target": TARGET_10M_RSS_MIB, "pass": False}
    c.print_table([{"events/day": r["events_per_day"], "users": r.get("n_users"), "items": r.get("n_items"),
                    "wall_s": r.get("wall_s"), "peak_rss_mib": r.get("peak_rss_mib"),
                    **(r.get("stages") or {}), "ok": r.get("success")} for r in rows],
                  f"daily cycle, model={args.model}")
    for name, t in targets.items():
        print(f"target {name}: {t['figure']} vs {t['target']}: {'pass' if t['pass'] else 'MISS'}")
    payload = {"sizes": rows, "cluster": None, "targets": targets, "model": args.model,
               "candidate": candidate, "machine": machine}
    if not sizes and args.json and Path(args.json).is_file():  # only the cluster measured: keep the sizes
        import json

        payload = {**json.loads(Path(args.json).read_text()), "machine": machine}
    if args.cluster:
        payload["cluster"] = cluster_speedup(Path(args.cluster), args.cluster_events, cache / "cluster", args.timeout)
        cl = payload["cluster"]
        c.print_table([{"mode": m, "wall_s": cl[f"{m}_s"], "runs": cl[f"{m}_runs"]}
                       for m in ("in_process", "in_process_parquet", "cluster")],
                      f"{CLUSTER_DAYS}-day backfill at {cl['events_per_day']} events/day, {cl['workers']} Celery workers")
        print(f"cluster speed-up over in-process: {cl['speedup']}x (same model: {cl['same_model']})")
    if args.gpu:
        payload["gpu"] = gpu_ratio(max(by) if by else sizes[-1], cache)
        print(f"gpu: {payload['gpu']}")
    if args.plot:
        plot(rows, Path(args.plot))
    c.write_json(args.json, payload)
    return 0 if all(r.get("success") for r in rows) else 1  # (a failed cluster run raises: exit 1)


if __name__ == "__main__":
    sys.exit(main())
