"""Ingest throughput: simulator -> DuckDB ``raw_events`` through the project's store path, against DuckDB's own
bulk insert of the same Arrow table, in the same run.

    python benchmarks/ingest_throughput.py [--json OUT] [--sizes 100000,1000000] [--days 3] [--repeat 3] [--quick]

Per size, for ``--days`` consecutive days on fresh warehouses (each day appended to the ones before):

* ``store``: :func:`factory_assets.data.ingest.ingest_day` on the simulator's ``DayBatch`` - the store path of the
  ``raw_events`` asset: validation (bulk tests that prove every row clean, else one DuckDB query of row checks
  over the registered frame), then one transaction (delete the day, ``INSERT INTO raw_events SELECT ...`` of the
  accepted rows from the same columns, quarantine, ingestion log, data version, ledger), plus the asset's metadata (counts by type, distinct users/items, preview).  Timed
  ``--repeat`` times per day (each a full replace of the day), its steps too (``prepare``, ``check``, ``insert``,
  ``quarantine``, ``version``, ``stats``, ``commit``, ``result``; see ``ingest_day``'s ``timings``).  The
  simulator's days have Arrow-backed text columns, are in ``(ts, event_id)`` order and pass every check, which
  ``ingest_day`` proves by bulk tests (``prepare``), so this is its proven-clean path: DuckDB's bulk insert of
  the batch's own columns as an Arrow table (``insert``), then the version and stats scans of the stored day.
* ``duckdb``: the same accepted rows as one Arrow table (``pyarrow.Table.from_pandas``, conversion not timed)
  inserted with ``INSERT INTO raw_events SELECT ?::DATE, <columns> FROM arrow_table`` into a table with the
  project's ``raw_events`` DDL, in its own database file, in one transaction; timed ``--repeat`` times per day
  alternating with ``store`` (the previous copy of the day is deleted, untimed, between repeats).
* ``two_step``: the previous path for reference, ``validate_events`` then ``warehouse.write_raw_partition`` (once).
* ``asset``: the ``raw_events`` asset body (``factory_assets.data.defs.raw``, called without Dagster): simulator
  ``fetch_day``, ``ingest_day``, the 4 raw checks, metadata; and ``simulate`` (``fetch_day``) and ``checks``
  (``raw_checks.run_checks``) apart.

events/s = accepted events / seconds (median over days of the median over repeats).  Issue 14's target: the
store path at least 1,000,000 events/s at 1M events/day on 2 cores.  ``store/duckdb`` = store seconds / bulk
insert seconds.  Generation (the simulator) is not part of the store path.  On a shared machine the medians
move by +-30 %; both sides are measured alternately so that their ratio is steadier than either number.

    python benchmarks/ingest_throughput.py --sizes 1000000 --days 3 --repeat 3 --json results/ingest_throughput.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

STEPS = ("prepare", "check", "insert", "quarantine", "version", "stats", "commit", "result")


def measure(events: int, n_days: int, repeat: int = 3) -> dict:
    import duckdb
    import pyarrow as pa

    from factory_assets.data import warehouse
    from factory_assets.data.defs import raw_checks
    from factory_assets.data.defs.raw import raw_events
    from factory_assets.data.ingest import ingest_day
    from factory_assets.data.sources.schema import EVENT_COLUMNS, validate_events

    shop = c.shop(events)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ingest_bench_") as tmp:
        tmp = Path(tmp)
        body = raw_events.op.compute_fn.decorated_fn
        asset_resources, _, _ = _resources(body, tmp / "asset", shop)
        _, source, connect = _resources(body, tmp / "store", shop)
        _, _, connect_old = _resources(body, tmp / "two_step", shop)
        bare = duckdb.connect(str(tmp / "bare.duckdb"))
        bare.execute("SET TimeZone = 'UTC'")
        bare.execute(warehouse.DDL[0])
        insert = f"INSERT INTO raw_events SELECT ?::DATE, {', '.join(EVENT_COLUMNS)} FROM arrow_table"
        for i in range(n_days):
            day = c.FIRST_DAY + timedelta(days=i)
            t = time.perf_counter()
            body(c._context(day), **asset_resources)  # noqa: SLF001
            asset_s = time.perf_counter() - t
            t = time.perf_counter()
            batch = source.fetch_day(day)
            simulate_s = time.perf_counter() - t
            # the previous two-step path, and the accepted rows for the baseline's Arrow table (not timed)
            with connect_old() as con:
                t = time.perf_counter()
                accepted, rejected = validate_events(batch.events, day)
                validate_s = time.perf_counter() - t
                t = time.perf_counter()
                warehouse.write_raw_partition(con, day, accepted, rejected, batch.undated, batch.files)
                write_s = time.perf_counter() - t
            arrow_table = pa.Table.from_pandas(accepted.loc[:, list(EVENT_COLUMNS)], preserve_index=False)  # noqa: F841 (read by name in SQL)
            store, bulk, steps = [], [], []
            with connect() as con:
                for _ in range(repeat):
                    timings: dict[str, float] = {}
                    t = time.perf_counter()
                    result = ingest_day(con, day, batch, timings=timings)
                    store.append(time.perf_counter() - t)
                    steps.append(timings)
                    bare.execute("DELETE FROM raw_events WHERE partition_day = ?", [day])
                    t = time.perf_counter()
                    bare.execute("BEGIN TRANSACTION")
                    bare.execute(insert, [day])
                    bare.execute("COMMIT")
                    bulk.append(time.perf_counter() - t)
                t = time.perf_counter()
                raw_checks.run_checks(con, day)
                checks_s = time.perf_counter() - t
            assert result.accepted == len(accepted), (result.accepted, len(accepted))
            row = {"day": day.isoformat(), "events": result.accepted, "store_s": c.median(store),
                   "duckdb_s": c.median(bulk), "two_step_s": validate_s + write_s, "validate_s": validate_s,
                   "write_s": write_s, "asset_s": asset_s, "simulate_s": simulate_s, "checks_s": checks_s,
                   "store_runs_s": store, "duckdb_runs_s": bulk,
                   "store_steps_s": {k: c.median([s.get(k, 0.0) for s in steps]) for k in STEPS}}
            rows.append(row)
            print(f"  {events}/day {day}: store {row['store_s']:.3f} s (" + ", ".join(
                f"{k} {v:.3f}" for k, v in row["store_steps_s"].items()) + f"); duckdb insert {row['duckdb_s']:.3f} s; "
                f"two-step {row['two_step_s']:.2f} s; asset {asset_s:.2f} s (simulate {simulate_s:.2f}, checks {checks_s:.2f})",
                flush=True)
        bare.close()
    med = {k: c.median([r[k] for r in rows]) for k in rows[0] if k.endswith("_s") and not k.endswith("runs_s")
           and k != "store_steps_s"}
    steps_med = {k: c.median([r["store_steps_s"][k] for r in rows]) for k in STEPS}
    n = c.median([r["events"] for r in rows])
    asset_minus_sim_s = med["asset_s"] - med["simulate_s"]
    return {
        "events_per_day": events, "repeat": repeat, "days": rows, "median": med, "store_steps_median_s": steps_med,
        "events": n,
        "events_per_s": {"store_path": n / med["store_s"], "duckdb_bulk_insert": n / med["duckdb_s"],
                         "two_step": n / med["two_step_s"], "asset_end_to_end": n / med["asset_s"],
                         "asset_minus_simulate": n / asset_minus_sim_s, "simulator": n / med["simulate_s"]},
        "ratio_store_path_vs_duckdb": med["store_s"] / med["duckdb_s"],
        "ratio_two_step_vs_duckdb": med["two_step_s"] / med["duckdb_s"],
        "ratio_asset_minus_simulate_vs_duckdb": asset_minus_sim_s / med["duckdb_s"],
        "target_store_path_events_per_s": TARGET, "meets_target": n / med["store_s"] >= TARGET,
    }


TARGET = 1_000_000  # events/s on the store path (ingest_day), issue 14


def _resources(body, home: Path, shop: dict):
    """``(asset kwargs, event source, warehouse connect())`` for the asset body's signature: the resources of
    ``Factory(home).resources()`` that it takes by key (``event_source``, ``warehouse``)."""
    import inspect

    factory = c.make_factory(home, shop)
    resources = factory.resources()
    kwargs = {name: resources[name] for name in inspect.signature(body).parameters if name in resources}
    return kwargs, factory.event_source, factory.warehouse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3, help="store/duckdb timings per day (alternating)")
    p.add_argument("--quick", action="store_true", help="20k events/day, 2 days, 2 repeats")
    args = p.parse_args(argv)
    sizes = [20_000] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    n_days = 2 if args.quick else args.days
    repeat = 2 if args.quick else args.repeat
    started = time.perf_counter()
    results = [measure(n, n_days, repeat) for n in sizes]
    rows = []
    for r in results:
        e = r["events_per_s"]
        rows.append({"events/day": r["events_per_day"], "store path ev/s": round(e["store_path"]),
                     "duckdb insert ev/s": round(e["duckdb_bulk_insert"]), "store/duckdb": r["ratio_store_path_vs_duckdb"],
                     "two-step ev/s": round(e["two_step"]), "two-step/duckdb": r["ratio_two_step_vs_duckdb"],
                     "asset-sim ev/s": round(e["asset_minus_simulate"]),
                     "asset-sim/duckdb": r["ratio_asset_minus_simulate_vs_duckdb"],
                     "asset ev/s": round(e["asset_end_to_end"]), "simulator ev/s": round(e["simulator"]),
                     f"store >= {TARGET:,}": r["meets_target"]})
    c.print_table(rows, "Ingest throughput (median over days): store path (ingest_day: validate + write in one "
                        "transaction) vs DuckDB bulk insert of the same Arrow table")
    c.print_table([{"events/day": r["events_per_day"], **{k: round(v, 3) for k, v in r["median"].items()}} for r in results],
                  "seconds per day (median)")
    c.print_table([{"events/day": r["events_per_day"], **{k: round(v, 3) for k, v in r["store_steps_median_s"].items()}}
                   for r in results], "store path steps, seconds per day (median)")
    c.write_json(args.json, {"benchmark": "ingest_throughput", "machine": c.machine_info(), "results": results,
                             "elapsed_s": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
