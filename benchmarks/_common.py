"""Shared helpers of the issue-8 benchmarks: machine info, history preparation, one daily cycle run through
Dagster or as a plain script, peak RSS, tables and JSON.

The *plain* cycle calls the very same asset bodies (``AssetsDefinition.op.compute_fn.decorated_fn``) in the
job's topological order, with a minimal stand-in for the Dagster context (``partition_key``, ``log``,
``retry_number``, ``job_name``), the resources of ``Factory.resources()`` (``warehouse``, ``event_source``,
``feature_store``, ``registry``, ``artefacts``, ``model_policy``) passed by key and the op configs built
directly: same library calls, same order,
same warehouse writes, but no Dagster instance, run/event storage, step orchestration, resource/config
resolution or check-result handling.  The difference between the two is the framework's overhead.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
SHARED_DATA = ROOT.parent / "shared" / "data"
OR_PATH = SHARED_DATA / "online-retail" / "online_retail.parquet"

# The simulator's calendar: the preference shift is 2024-11-11; the measured day sits well after a full window.
FIRST_DAY = date(2024, 10, 1)
DEFAULT_SHOP = {"n_users": 3000, "n_items": 800, "seed": 7}

# Fixed candidate parameters for every measured cycle: the default model (learned ranker, linear) with the
# ALS search and the C search switched off (search_budget=1 -> only ALS_GRID[0] = the ModelParams defaults,
# ranker_c fixed), so a cycle is deterministic and does one configuration's work.
FIXED_CANDIDATE = {"model_kind": "ranker", "search_budget": 1, "ranker_c": 0.1}
# The blend at a fixed ALS weight (no tuning fit): used where the ranker is too slow for repeated cycles.
FIXED_BLEND = {"model_kind": "blend", "als_weight": 1.0}


# --------------------------------------------------------------------------------------------- reporting
def machine_info() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("dagster", "duckdb", "implicit", "numpy", "pandas", "pyarrow", "scikit-learn", "scipy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average": os.getloadavg(),
        "uptime": _uptime(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def print_table(rows: list[dict], title: str | None = None) -> None:
    from tabulate import tabulate

    if title:
        print(f"\n{title}")
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3f"))
    sys.stdout.flush()


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {path}")


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def peak_rss_mib() -> dict:
    """ru_maxrss of this process and of its waited-for children (MiB; Linux reports KiB)."""
    return {
        "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def run_json_subprocess(args: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``python <args>`` whose last stdout line is a JSON document; return it (stderr passed through on error)."""
    proc = subprocess.run([PYTHON, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- factories
def shop(events_per_day: float, **extra) -> dict:
    return {**DEFAULT_SHOP, "events_per_day": float(events_per_day), **extra}


def make_factory(home: Path, shop_options: dict):
    from factory_assets.resources import Factory, SimulatorOptions

    return Factory(home=str(home), source="simulator", source_path="", simulator=SimulatorOptions(**shop_options))


def run_config(home: Path, shop_options: dict, candidate: dict | None = None) -> dict:
    """Run config of the definitions' jobs for ``home``: every resource key (``Factory.run_config``), plus
    ``candidate_model``'s op config when given."""
    config: dict = {"resources": make_factory(home, shop_options).run_config()}
    if candidate:
        config["ops"] = {"candidate_model": {"config": dict(candidate)}}
    return config


def ingest_history_fast(home: Path, shop_options: dict, days: list[date]) -> dict:
    """Store ``days`` of simulated history through the library's writers (no Dagster, no re-validation).

    Per day: the simulator's ``fetch_day`` (already in the common schema, so ``validate_events`` would accept
    every row unchanged), ``warehouse.write_raw_partition`` (same transaction and data version as the asset)
    and ``views.build_view_partition`` for the four daily views.  online_features is only a serving copy of
    the latest day and is not needed for history.  Returns timings.
    """
    from factory_assets.data import warehouse
    from factory_assets.feature_store import store, views
    from factory_assets.data.sources.schema import empty_quarantine

    factory = make_factory(home, shop_options)
    source = factory.event_source
    started = time.perf_counter()
    n_events = 0
    with factory.warehouse() as con:
        for day in days:
            events = source.fetch_day(day).events
            n_events += len(events)
            warehouse.write_raw_partition(con, day, events, empty_quarantine())
            for view in (store.USER_ITEM_DAILY, store.ITEM_DAILY, views.USER_FEATURES, views.ITEM_FEATURES):
                views.build_view_partition(con, view, day)
        con.execute("CHECKPOINT")
    return {"days": len(days), "events": n_events, "seconds": round(time.perf_counter() - started, 2)}


def copy_home(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# --------------------------------------------------------------------------------------------- one cycle
INGEST_JOB, TRAINING_JOB = "daily_ingest", "daily_training"
PART_JOBS = {"cycle": (INGEST_JOB, TRAINING_JOB), "ingest": (INGEST_JOB,), "training": (TRAINING_JOB,)}


class _Log:
    def __init__(self) -> None:
        self._log = logging.getLogger("bench.plain")

    def info(self, msg, *a, **k):
        self._log.info(msg)

    def warning(self, msg, *a, **k):
        self._log.warning(msg)

    def error(self, msg, *a, **k):
        self._log.error(msg)

    def debug(self, msg, *a, **k):
        self._log.debug(msg)


def _context(day: date, job_name: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(partition_key=day.isoformat(), log=_Log(), retry_number=0, job_name=job_name)


def job_nodes(job_name: str) -> list:
    """The ops of a code-location job in topological order (assets and asset checks)."""
    from factory_assets.definitions import defs

    return list(defs.resolve_job_def(job_name).graph.nodes_in_topological_order)


def plain_cycle(home: Path, shop_options: dict, day: date, candidate: dict, jobs: tuple[str, ...],
                only: tuple[str, ...] | None = None) -> dict:
    """The jobs' op bodies (``compute_fn.decorated_fn``) called directly, in the jobs' topological order.

    Arguments are built from each body's signature: ``context`` -> a stand-in (partition_key, log,
    retry_number, job_name), resources by key (``Factory(home).resources()``: ``warehouse``, ``event_source``,
    ``feature_store``, ``registry``, ``artefacts``, ``model_policy``; and ``alert_webhook``), ``config`` -> its Config
    class with defaults (``candidate`` for candidate_model).  A blocking check that fails skips everything
    downstream of its asset, as Dagster would.  ``only``: run just these op names (e.g. setup of a champion).
    """
    import inspect
    import typing

    from factory_assets.platform.alerts import AlertWebhook

    factory = make_factory(home, shop_options)
    resources = {**factory.resources(), "alert_webhook": AlertWebhook()}
    timings, blocked, verdict = {}, set(), None
    for job in jobs:
        from factory_assets.definitions import defs

        ctx = _context(day, job)
        job_def = defs.resolve_job_def(job)
        deps = job_def.graph.dependency_structure
        for node in job_nodes(job):
            if only is not None and node.name not in only:
                continue
            upstream = {h.node_name for h in deps.all_upstream_outputs_from_node(node.name)}
            if node.name.startswith("served_model_") or node.name == "served_model":
                upstream |= {"candidate_model"}  # the check of served_model runs after it
            if upstream & blocked:
                blocked.add(node.name)
                timings[node.name] = 0.0
                continue
            fn = node.definition.compute_fn.decorated_fn
            hints = typing.get_type_hints(fn)
            kwargs = {}
            for name in inspect.signature(fn).parameters:
                if name == "context":
                    kwargs[name] = ctx
                elif name in resources:
                    kwargs[name] = resources[name]
                elif name == "config":
                    cls = hints[name]
                    kwargs[name] = cls(**candidate) if node.name == "candidate_model" else cls()
                else:
                    raise TypeError(f"{node.name}: do not know how to pass {name!r}")
            t = time.perf_counter()
            result = fn(**kwargs)
            timings[node.name] = time.perf_counter() - t
            specs = {s.name: s for s in getattr(node.definition, "check_specs", [])} if hasattr(node.definition, "check_specs") else {}
            failed = [r for r in (getattr(result, "check_results", None) or []) if not r.passed]
            if any(specs.get(r.check_name) is None or specs[r.check_name].blocking for r in failed):
                blocked.add(node.name)
            if node.name == "candidate_model":
                verdict = result.metadata.get("verdict")
    return {"steps": timings, "verdict": verdict, "blocked": sorted(blocked)}


def dagster_cycle(home: Path, shop_options: dict, day: date, candidate: dict, jobs: tuple[str, ...], executor: str) -> dict:
    """The real jobs through Dagster on the instance under ``home/dagster`` (the project's dagster.yaml).

    ``executor="in_process"``: ``execute_in_process`` of the code location's jobs (what ``factory run`` does).
    ``executor="multiprocess"``: ``dagster.execute_job`` of the same jobs rebuilt with ``multiprocess_executor``
    (benchmarks/_mp_jobs.py, reconstructable): one process per step.
    """
    from dagster import DagsterInstance

    from factory_assets.platform import settings

    os.environ.pop("DAGSTER_HOME", None)
    settings.dagster_home(home)
    instance = DagsterInstance.get()
    instance.get_runs(limit=1)  # storages created before the clock (a long-lived instance already has them)
    configs = {"daily_ingest": run_config(home, shop_options), "daily_training": run_config(home, shop_options, candidate)}
    out = {}
    if executor == "in_process":
        from factory_assets.definitions import defs

        for job in jobs:
            t = time.perf_counter()
            result = defs.resolve_job_def(job).execute_in_process(
                run_config=configs[job], instance=instance, partition_key=day.isoformat(), raise_on_error=False
            )
            out[job] = {"seconds": time.perf_counter() - t, "success": result.success,
                        **run_details(instance, result.run_id)}
    else:
        from dagster import execute_job, reconstructable

        sys.path.insert(0, str(BENCH))
        import _mp_jobs

        for job in jobs:
            t = time.perf_counter()
            fn = {"daily_ingest": _mp_jobs.daily_ingest_mp, "daily_training": _mp_jobs.daily_training_mp}[job]
            with execute_job(reconstructable(fn), instance=instance, run_config=configs[job],
                             tags={"dagster/partition": day.isoformat()}, raise_on_error=False) as result:
                success = result.success
            out[job] = {"seconds": time.perf_counter() - t, "success": success}
    instance.dispose()
    return out


def run_details(instance, run_id: str) -> dict:
    """Per-step wall seconds of a finished run (``steps``: step key -> end - start, from the instance's step
    stats) and the ``stage_seconds`` metadata of its ``candidate_model`` materialization, if any."""
    from dagster import AssetKey

    steps = {s.step_key: round(s.end_time - s.start_time, 3)
             for s in instance.get_run_step_stats(run_id) if s.start_time and s.end_time}
    candidate = {}
    for record in instance.fetch_materializations(AssetKey("candidate_model"), limit=5, ascending=False).records:
        if record.event_log_entry.run_id == run_id:
            meta = record.asset_materialization.metadata.get("stage_seconds")
            candidate = dict(meta.value) if meta is not None else {}
    return {"steps": steps, "candidate_stages": candidate}


def measure_cycle_subprocess(mode: str, home: Path, shop_options: dict, day: date, candidate: dict,
                             part: str = "cycle", timeout: float | None = None) -> dict:
    """Run one cycle (``part``: ``cycle`` = ingest + training, ``ingest``, ``training``) in a fresh process."""
    payload = json.dumps({"mode": mode, "home": str(home), "shop": shop_options, "day": day.isoformat(),
                          "candidate": candidate, "part": part})
    return run_json_subprocess([str(BENCH / "_cycle_worker.py"), payload], timeout=timeout)


MODEL_CODE = ("factory_assets/ml/recsys", "factory_assets/ml/training.py", "factory_assets/ml/defs/candidate.py",
              "factory_assets/ml/candidate_day.py", "factory_assets/ml/promotion.py", "factory_assets/ml/registry.py",
              "factory_assets/ml/resources.py")


def model_fingerprint(candidate: dict) -> str:
    """sha256 of the model code and the candidate parameters: a cached champion is only reused by the same code
    (an artefact saved by other code may not load: its manifest's params must match ``ModelParams``)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(candidate, sort_keys=True).encode())
    for part in MODEL_CODE:
        path = ROOT / part
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []:
            digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def prepared_home(cache: Path, shop_options: dict, days: list[date], champion_day: date | None,
                  candidate: dict) -> tuple[Path, dict]:
    """A FACTORY_HOME with ``days`` of history (and a champion trained on ``champion_day``), built once, cached.

    The history (the slow part) is cached per shop and days; the champion per model code + parameters
    (:func:`model_fingerprint`), on a copy of the history.  Do not use the returned home itself: copy it.
    """
    key = f"e{int(shop_options['events_per_day'])}_u{shop_options['n_users']}_i{shop_options['n_items']}_" \
          f"{days[0].isoformat()}_{len(days)}d"
    legacy = cache / f"{key}_champ"
    if (legacy / ".prepared.json").exists():
        info = json.loads((legacy / ".prepared.json").read_text())
        if info.get("champion", {}).get("verdict") not in ("promote", None):
            return legacy, info  # no champion artefact was promoted: nothing code-dependent to load
    hist = cache / f"{key}_history"
    if not (hist / ".history.json").exists():
        if (legacy / ".history.json").exists() and not (legacy / ".prepared.json").exists():
            if hist.exists():
                shutil.rmtree(hist)
            legacy.rename(hist)  # an interrupted preparation of the old layout: history only
        else:
            if hist.exists():
                shutil.rmtree(hist)
            hist.mkdir(parents=True)
            (hist / ".history.json").write_text(json.dumps(ingest_history_fast(hist, shop_options, days)))
    history = json.loads((hist / ".history.json").read_text())
    if champion_day is None:
        return hist, {"history": history, "mib": round(dir_mib(hist), 1)}
    home = cache / f"{key}_champ_{model_fingerprint(candidate)}"
    done = home / ".prepared.json"
    if done.exists():
        return home, json.loads(done.read_text())
    copy_home(hist, home)
    info = {"history": history}
    t = time.perf_counter()
    res = plain_cycle(home, shop_options, champion_day, candidate, (TRAINING_JOB,),
                      only=("training_window", "candidate_model", "served_model"))
    info["champion"] = {"day": champion_day.isoformat(), "verdict": res["verdict"], "seconds": round(time.perf_counter() - t, 2),
                        "candidate": candidate}
    info["mib"] = round(dir_mib(home), 1)
    done.write_text(json.dumps(info))
    return home, info


def default_cache() -> Path:
    return Path(os.environ.get("FACTORY_BENCH_CACHE", Path(tempfile.gettempdir()) / "factory_bench_cache"))
