"""``factory``: run the whole factory through Dagster for a date range, or open the UI on its instance.

    factory run [--source S] [--path P] [--start D] [--end D] [--backtest] [--home H] [--json]
    factory dev [dagster dev options...]
    factory serve [--host 127.0.0.1] [--port 8000]   (factory_assets.service: HTTP recommendations of the champion)
    factory models list | show VERSION | diff A B | rollback [--to VERSION] --reason TEXT   (factory_assets.registry.cli)
    factory demo [--json] [--strengths A,B,C] [--model-kind blend|ranker] [--home H]   (factory_assets.demo)

``factory run`` materialises every raw and feature partition of the range (one ``daily_ingest`` run per
day), then trains, gates and (if the gates pass) promotes one candidate per day for the last 7 days of the
range (``--backtest``: every day with a full window), one ``daily_training`` run per day.  The runs go to the
Dagster instance under ``FACTORY_HOME`` (``$DAGSTER_HOME`` if set), so they are visible in the UI.  The
chosen source travels as run config, so no run depends on this shell's environment.

With ``--json`` standard output is exactly one JSON document (logs go to standard error)::

    {"source", "warehouse", "dagster_home", "range": {"start", "end"},
     "served_model": {"version", "sha256", "path", "partition_day"} | null,
     "evaluation": {"model": {...}, "baselines": {"popularity": {...}, "repeat": {...}}, "references": {...},
                    "segments": [...]},
     "checks": [{"name", "passed", "reason"}],
     "partitions": ["YYYY-MM-DD", ...], "trained": [{"partition", "version", "status", "reason"}],
     "registry": {"versions", "promotions"}, "runs": [{"job", "partition", "run_id", "success", "error" (failed only)}],
     "elapsed_s"}

``evaluation`` and ``checks`` describe the last day's candidate; ``served_model`` (with ``partition_day``) is
the champion at the end.  A refused input prints ``{"error": "..."}`` instead (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from factory_assets import settings

SIMULATOR_RANGE = ("2024-10-06", "2024-11-30")  # eight weeks; the default preference shift is 2024-11-11
TRAIN_LAST_DAYS = 7

log = logging.getLogger("factory")


def _parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"factory: {flag} {text!r} is not an ISO date (YYYY-MM-DD)") from None


def _check_range(start: date, end: date, first: date, last: date, window_days: int) -> None:
    """Refuse ranges outside the partitions definition, reversed, or too short for one training window."""
    if start > end:
        raise SystemExit(f"factory: --start {start} is after --end {end}")
    if start < first:
        raise SystemExit(f"factory: --start {start} is before the first partition {first} (FACTORY_PARTITION_START)")
    if end > last:
        raise SystemExit(f"factory: --end {end} is after the last complete UTC day {last}")
    if (end - start).days + 1 < window_days:
        raise SystemExit(
            f"factory: the range {start}..{end} has {(end - start).days + 1} days; a candidate needs a full "
            f"{window_days}-day window"
        )


def run(args: argparse.Namespace, simulator: dict | None = None, candidate: dict | None = None) -> dict:
    """Execute the range and return the summary (see the module docstring).

    ``simulator`` (``SimulatorOptions`` fields, e.g. ``{"shift_strength": 3.0}``) and ``candidate``
    (``CandidateConfig`` fields, e.g. ``{"model_kind": "blend"}``) travel as run config too; ``factory demo``
    uses them.
    """
    started = time.perf_counter()
    source = args.source or settings.source_name()
    if source not in settings.SOURCE_NAMES:
        raise SystemExit(f"factory: unknown source {source!r}; known: {', '.join(settings.SOURCE_NAMES)}")
    path = args.path if args.path is not None else settings.source_path()
    if source != "simulator" and not path:
        raise SystemExit(f"factory: source {source!r} needs --path (or FACTORY_SOURCE_PATH)")
    if path:
        path = str(Path(path).expanduser().resolve())
        if not Path(path).exists():
            raise SystemExit(f"factory: --path {path} does not exist")
    home = Path(args.home).expanduser().resolve() if args.home else settings.factory_home()
    os.environ["FACTORY_HOME"] = str(home)
    os.environ["FACTORY_SOURCE"] = source  # definitions below read the source's window length
    if source == "simulator" and (args.start is None or args.end is None):
        start_s, end_s = args.start or SIMULATOR_RANGE[0], args.end or SIMULATOR_RANGE[1]
    elif args.start is None or args.end is None:
        raise SystemExit(f"factory: source {source!r} needs --start and --end")
    else:
        start_s, end_s = args.start, args.end
    start, end = _parse_day(start_s, "--start"), _parse_day(end_s, "--end")

    dagster_home = settings.dagster_home(home)
    from dagster import DagsterInstance

    from factory_assets.assets.partitions import DAILY, WINDOW_DAYS
    from factory_assets.definitions import INGEST_JOB, TRAINING_JOB, defs
    from factory_assets.features import store
    from factory_assets.registry import registry
    from factory_assets.resources import FactoryResource, SimulatorOptions

    first = date.fromisoformat(DAILY.get_first_partition_key())
    last = date.fromisoformat(DAILY.get_last_partition_key())
    _check_range(start, end, first, last, WINDOW_DAYS)

    factory_config = {"home": str(home), "source": source, "source_path": path or ""}
    if simulator:
        factory_config["simulator"] = dict(simulator)
    run_config = {"resources": {"factory": {"config": factory_config}}}
    training_config = {**run_config, "ops": {"candidate_model": {"config": dict(candidate)}}} if candidate else run_config
    factory = FactoryResource(home=str(home), source=source, source_path=path or "",
                              simulator=SimulatorOptions(**(simulator or {})))
    instance = DagsterInstance.get()
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    first_trainable = start + timedelta(days=WINDOW_DAYS - 1)
    train_days = [d for d in days if d >= first_trainable]
    if not args.backtest:
        train_days = train_days[-TRAIN_LAST_DAYS:]

    runs = []

    def execute(job_name: str, day: date) -> bool:
        result = defs.resolve_job_def(job_name).execute_in_process(
            run_config=training_config if job_name == TRAINING_JOB else run_config, instance=instance, partition_key=day.isoformat(), raise_on_error=False,
            tags={"factory/cli": "run"},
        )
        row = {"job": job_name, "partition": day.isoformat(), "run_id": result.run_id, "success": result.success}
        if not result.success:
            row["error"] = _failure(result)
        runs.append(row)
        log.info("%s %s: %s (run %s)", job_name, day, "ok" if result.success else f"FAILED: {row['error']}", result.run_id)
        return result.success

    for day in days:
        if not execute(INGEST_JOB, day):
            # every later window would hold this hole, and a permanent source error (a wrong file) fails every
            # day alike: stop here rather than fail each remaining day one by one
            log.error("stopping: daily_ingest %s failed (run %s); later days and training not run", day, runs[-1]["run_id"])
            train_days = []
            break
    for day in train_days:
        execute(TRAINING_JOB, day)

    with factory.warehouse() as con:
        trained = []
        for day in train_days:
            row = registry.latest_for_day(con, day)
            if row:
                trained.append({"partition": day.isoformat(), "version": row["version"], "status": row["status"], "reason": row["reason"]})
        last_row = registry.latest_for_day(con, train_days[-1]) if train_days else None
        window = store.load_window_manifest(con, train_days[-1]) if train_days else None
        n_versions = len(registry.versions(con))
        events = registry.history(con)
        n_promotions = int((events["action"] == "promoted").sum())
    champion = registry.read_alias(factory.layout.aliases)
    checks = []
    if window is not None:
        missing = {view: days for view, days in window["missing"].items() if days}
        checks.append({"name": "window_complete", "passed": bool(window["complete"]),
                       "reason": f"all {window['days']} days of every feature view present" if window["complete"]
                       else "missing feature partitions: " + "; ".join(f"{v}: {', '.join(d)}" for v, d in missing.items())})
    if last_row is not None:
        checks += [{"name": g["name"], "passed": g["passed"], "reason": g["reason"]} for g in last_row["metrics"]["gates"]]
    return {
        "source": source,
        "warehouse": str(factory.layout.warehouse),
        "dagster_home": str(dagster_home),
        "range": {"start": start.isoformat(), "end": end.isoformat()},
        "served_model": None if champion is None else {k: champion[k] for k in ("version", "sha256", "path", "partition_day")},
        "evaluation": None if last_row is None else last_row["metrics"]["evaluation"],
        "checks": checks,
        "partitions": [d.isoformat() for d in days],
        "trained": trained,
        "registry": {"versions": n_versions, "promotions": n_promotions},
        "runs": runs,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _failure(result) -> str:
    """One line per failed step of an in-process run: ``step: first line of its error`` ("; "-joined)."""
    lines = []
    for event in result.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        message = (error.message if error is not None else event.message or "failed").strip().splitlines()
        first = message[0] if message else "failed"
        head, sep, rest = first.partition(": ")
        if error is not None and sep and head.rsplit(".", 1)[-1] == error.cls_name:  # "pkg.mod.Failure: text"
            first = rest
        lines.append(f"{event.step_key}: {first}")
    return "; ".join(lines) or "the run failed (no step failure recorded; see the Dagster run log)"


def _print_human(summary: dict) -> None:
    out = sys.stdout
    print(f"factory run: {summary['source']} {summary['range']['start']} .. {summary['range']['end']} "
          f"in {summary['elapsed_s']} s", file=out)
    failed = [r for r in summary["runs"] if not r["success"]]
    print(f"  runs: {len(summary['runs'])} ({len(failed)} failed)", file=out)
    for row in failed:
        print(f"    {row['job']} {row['partition']} failed: {row['error']}", file=out)
    for row in summary["trained"]:
        print(f"  candidate {row['partition']}: v{row['version']} {row['status']}", file=out)
    if summary["evaluation"]:
        ev = summary["evaluation"]
        print(f"  last candidate NDCG@10 {ev['model']['ndcg_at_10']:.4f} on {ev['model']['n_users']} users; baselines: "
              + ", ".join(f"{n} {m['ndcg_at_10']:.4f}" for n, m in ev["baselines"].items()), file=out)
    served = summary["served_model"]
    print(f"  served model: {'none' if served is None else 'v' + str(served['version']) + ' ' + served['path']}", file=out)
    print(f"  registry: {summary['registry']['versions']} versions, {summary['registry']['promotions']} promotions", file=out)
    print(f"  warehouse: {summary['warehouse']}", file=out)
    home = Path(summary["warehouse"]).parents[1]
    hint = "./dev ui" if home == (Path.cwd() / ".factory_home").resolve() else f"FACTORY_HOME={home} ./dev ui"
    print(f"  Dagster UI: {hint}   (DAGSTER_HOME={summary['dagster_home']})", file=out)


def _strengths(text: str | None) -> list[float]:
    from factory_assets.demo import DEFAULT_STRENGTH

    if text is None:
        return [DEFAULT_STRENGTH]
    if not text.strip():
        raise SystemExit("factory: --strengths is empty; give one or more strengths, e.g. 0.75,1.5,3")
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"factory: --strengths {text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0 <= v <= 10 for v in values):
        raise SystemExit(f"factory: --strengths {text!r}: give one or more strengths in 0..10")
    return values


def demo(args: argparse.Namespace) -> int:
    """``factory demo``: run the experiment per strength, report it to the UI, print JSON or a table."""
    from factory_assets import demo as experiment

    strengths = _strengths(args.strengths)
    base = Path(args.home).expanduser().resolve() if args.home else settings.factory_home()
    results = [experiment.run_strength(base, experiment.DemoConfig(strength=s, model_kind=args.model_kind)) for s in strengths]
    from dagster import DagsterInstance

    from factory_assets.assets.demo import report

    settings.dagster_home(base)  # the main instance (``./dev ui``) shows the adaptation_demo asset
    instance = DagsterInstance.get()
    for result in results:
        report(instance, result)
    if args.json:
        document = results[0] if len(results) == 1 else {"runs": results}
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for result in results:
            s = result["summary"]
            print(f"shift strength {result['shift_strength']:g} (shift {result['shift_date']}, {result['elapsed_s']} s): "
                  f"factory/oracle hit-rate@10 on {s['first_day_after_shift']} = {s['factory_vs_oracle_first_day_after']} "
                  f"(target >= 0.9); static/oracle after the shift <= {s['static_vs_oracle_max_after']} (target < 0.5); "
                  f"mean factory/oracle before {s['factory_vs_oracle_mean_before_shift']}, after {s['factory_vs_oracle_mean_after']}; "
                  f"{len(s['promotions'])} promotions; plot {result['outputs']['png']}")
    return 0


def dev(extra: list[str]) -> int:
    """Seed the instance under FACTORY_HOME and exec ``dagster dev`` on it."""
    settings.dagster_home()
    beside = Path(sys.executable).with_name("dagster")  # the venv's own, whether or not it is on PATH
    program = str(beside) if beside.exists() else "dagster"
    os.execvp(program, [program, "dev", *extra])
    return 0  # pragma: no cover - exec does not return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="factory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the factory end to end for a date range")
    run_p.add_argument("--source", choices=settings.SOURCE_NAMES, help="default: FACTORY_SOURCE or simulator")
    run_p.add_argument("--path", help="file or folder of a file-based source (default: FACTORY_SOURCE_PATH)")
    run_p.add_argument("--start", help=f"first day, ISO (simulator default {SIMULATOR_RANGE[0]})")
    run_p.add_argument("--end", help=f"last day, ISO (simulator default {SIMULATOR_RANGE[1]})")
    run_p.add_argument("--backtest", action="store_true", help="train a candidate for every day with a full window")
    run_p.add_argument("--home", help="FACTORY_HOME (default ./.factory_home)")
    run_p.add_argument("--json", action="store_true", help="print one JSON summary on stdout; logs on stderr")
    demo_p = sub.add_parser("demo", help="the adaptation experiment: factory vs static model vs oracle under a shift")
    demo_p.add_argument("--strengths", help="comma-separated shift strengths to sweep, e.g. 0.75,1.5,3 "
                        "(default: the simulator's 1.5 only)")
    demo_p.add_argument("--model-kind", default="blend", choices=("blend", "ranker"),
                        help="candidate model (default blend: ~2 s a fit; the ranker takes ~40 s)")
    demo_p.add_argument("--home", help="base FACTORY_HOME; each strength runs in <home>/demo/shift-<s> (default ./.factory_home)")
    demo_p.add_argument("--json", action="store_true", help="print the JSON document on stdout; logs on stderr")
    dev_p = sub.add_parser("dev", help="dagster dev on the factory's instance (extra args are passed on)")
    dev_p.add_argument("extra", nargs=argparse.REMAINDER)
    from factory_assets.registry import cli as models_cli

    models_cli.add_parser(sub)
    from factory_assets.service import cli as service_cli

    service_cli.add_parser(sub)
    # Dagster marks APIs this code location relies on (map_asset_specs) as preview: worth knowing once, in the
    # code, not as two warnings before every command's output
    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta).*")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["dev"]:  # everything after `dev` is dagster dev's (argparse would refuse a leading option)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
        try:
            check_settings()
        except settings.SettingsError as exc:
            return _refuse(f"factory: {exc}", as_json=False)
        return dev(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        return _dispatch(args)
    except settings.SettingsError as exc:  # a bad FACTORY_* variable: one line, not a traceback
        return _refuse(f"factory: {exc}", getattr(args, "json", False))


def _refuse(message: str, as_json: bool) -> int:
    """A refused command: ``message`` on standard error (and ``{"error": message}`` as the one document on
    standard output with ``--json``); returns the exit status, 2."""
    if as_json:
        json.dump({"error": message}, sys.stdout)
        sys.stdout.write("\n")
    print(message, file=sys.stderr)
    return 2


def check_settings() -> None:
    """Read every ``FACTORY_*`` setting once, so a bad value stops a command before it starts any run.

    Raises:
        settings.SettingsError: naming the variable and its value.
    """
    settings.source_name()
    settings.partition_start()
    settings.window_days()
    settings.history_days()
    from factory_assets.executors import MissingExecutorPackage, executor_for

    try:
        executor_for()  # celery / k8s: is the integration package installed?
    except MissingExecutorPackage as exc:
        raise settings.SettingsError(str(exc)) from exc
    settings.als_gpu()


def _dispatch(args) -> int:
    from factory_assets.registry import cli as models_cli
    from factory_assets.service import cli as service_cli

    if args.command in ("run", "demo", "dev"):
        if getattr(args, "source", None):  # --source overrides FACTORY_SOURCE (run() sets it the same way)
            os.environ["FACTORY_SOURCE"] = args.source
        check_settings()
    if args.command == "dev":
        return dev(args.extra)
    if args.command == "models":
        return models_cli.main(args)
    if args.command == "serve":
        return service_cli.main(args)
    try:
        if args.command == "demo":
            return demo(args)
        summary = run(args)
    except SystemExit as exc:  # a refused input: exit status 2; with --json, stdout still carries one document
        if isinstance(exc.code, str):
            return _refuse(exc.code, args.json)
        raise
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_human(summary)
    return 0 if all(r["success"] for r in summary["runs"]) and summary["served_model"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
