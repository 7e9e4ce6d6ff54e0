"""Ingest throughput: simulator -> DuckDB ``raw_events`` through the project's path, against DuckDB's own bulk
insert of the same Arrow table.

    python benchmarks/ingest_throughput.py [--json OUT] [--sizes 100000,1000000] [--days 3] [--quick]

Per size, for ``--days`` consecutive days on a fresh warehouse (each day appended to the ones before):

* ``asset``: the ``raw_events`` asset body (``factory_assets.data.defs.raw``, called without Dagster): simulator
  ``fetch_day``, ``validate_events`` (schema, ids, timestamps in the day, quantities, duplicates), quarantine
  concat, ``warehouse.write_raw_partition`` (sort by event_id, sha256 data version, one transaction: delete day,
  insert, quarantine, ledger) and the 4 raw checks re-reading the day.  Its components are timed separately
  with the same calls: ``simulate``, ``validate``, ``write`` (write_raw_partition), ``checks``.
* ``duckdb``: the same accepted rows as one Arrow table (``pyarrow.Table.from_pandas``, conversion not timed)
  inserted with ``INSERT INTO raw_events SELECT ?::DATE, <columns> FROM arrow_table`` into a table with the
  project's ``raw_events`` DDL, in its own fresh database file, inside one transaction.

events/s = events / seconds (median over days).  Ratios: ``write / duckdb`` (the writer's cost over a bare
bulk insert: sorting, hashing, the delete and the ledger) and ``asset-minus-simulate / duckdb`` (the whole
store path).  No target in issue 8: reported.
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


def measure(events: int, n_days: int) -> dict:
    import duckdb
    import pandas as pd
    import pyarrow as pa

    from factory_assets.data import warehouse
    from factory_assets.data.defs.raw import raw_events
    from factory_assets.data.defs import raw_checks
    from factory_assets.data.sources.schema import EVENT_COLUMNS, validate_events

    shop = c.shop(events)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ingest_bench_") as tmp:
        tmp = Path(tmp)
        asset_home, comp_home = tmp / "asset", tmp / "components"
        asset_factory, comp_factory = c.make_factory(asset_home, shop), c.make_factory(comp_home, shop)
        bare = duckdb.connect(str(tmp / "bare.duckdb"))
        bare.execute("SET TimeZone = 'UTC'")
        bare.execute(warehouse.DDL[0])
        for i in range(n_days):
            day = c.FIRST_DAY + timedelta(days=i)
            # 1) the asset body, end to end
            t = time.perf_counter()
            raw_events.op.compute_fn.decorated_fn(c._context(day), asset_factory)  # noqa: SLF001
            asset_s = time.perf_counter() - t
            # 2) the same calls one by one, on a second warehouse
            t = time.perf_counter()
            batch = comp_factory.event_source.fetch_day(day)
            simulate_s = time.perf_counter() - t
            t = time.perf_counter()
            accepted, rejected = validate_events(batch.events, day)
            quarantined = pd.concat([batch.quarantined, rejected], ignore_index=True)
            validate_s = time.perf_counter() - t
            with comp_factory.warehouse() as con:
                t = time.perf_counter()
                warehouse.write_raw_partition(con, day, accepted, quarantined, batch.undated, batch.files)
                write_s = time.perf_counter() - t
                t = time.perf_counter()
                raw_checks.run_checks(con, day)
                checks_s = time.perf_counter() - t
            # 3) DuckDB's own bulk insert of the same rows as Arrow
            arrow_table = pa.Table.from_pandas(accepted.loc[:, list(EVENT_COLUMNS)], preserve_index=False)
            t = time.perf_counter()
            bare.execute("BEGIN TRANSACTION")
            bare.execute(f"INSERT INTO raw_events SELECT ?::DATE, {', '.join(EVENT_COLUMNS)} FROM arrow_table", [day])
            bare.execute("COMMIT")
            duckdb_s = time.perf_counter() - t
            rows.append({"day": day.isoformat(), "events": len(accepted), "asset_s": asset_s, "simulate_s": simulate_s,
                         "validate_s": validate_s, "write_s": write_s, "checks_s": checks_s, "duckdb_s": duckdb_s})
            print(f"  {events}/day {day}: asset {asset_s:.2f} s (simulate {simulate_s:.2f}, validate {validate_s:.2f}, "
                  f"write {write_s:.2f}, checks {checks_s:.2f}); duckdb insert {duckdb_s:.3f} s", flush=True)
        bare.close()
    med = {k: c.median([r[k] for r in rows]) for k in rows[0] if k.endswith("_s")}
    n = c.median([r["events"] for r in rows])
    store_s = med["asset_s"] - med["simulate_s"]
    return {
        "events_per_day": events, "days": rows, "median": med, "events": n,
        "events_per_s": {"asset_end_to_end": n / med["asset_s"], "asset_store_path": n / store_s,
                         "write_raw_partition": n / med["write_s"], "duckdb_bulk_insert": n / med["duckdb_s"],
                         "simulator": n / med["simulate_s"], "validate_events": n / med["validate_s"]},
        "ratio_write_vs_duckdb": med["write_s"] / med["duckdb_s"],
        "ratio_store_path_vs_duckdb": store_s / med["duckdb_s"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20k events/day, 2 days")
    args = p.parse_args(argv)
    sizes = [20_000] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    n_days = 2 if args.quick else args.days
    started = time.perf_counter()
    results = [measure(n, n_days) for n in sizes]
    rows = []
    for r in results:
        e = r["events_per_s"]
        rows.append({"events/day": r["events_per_day"], "asset ev/s": round(e["asset_end_to_end"]),
                     "store path ev/s": round(e["asset_store_path"]), "write_raw_partition ev/s": round(e["write_raw_partition"]),
                     "duckdb insert ev/s": round(e["duckdb_bulk_insert"]), "write/duckdb": r["ratio_write_vs_duckdb"],
                     "store/duckdb": r["ratio_store_path_vs_duckdb"], "validate ev/s": round(e["validate_events"]),
                     "simulator ev/s": round(e["simulator"])})
    c.print_table(rows, "Ingest throughput (median over days): project path vs DuckDB bulk insert of the same Arrow table")
    c.print_table([{"events/day": r["events_per_day"], **{k: round(v, 3) for k, v in r["median"].items()}} for r in results],
                  "seconds per day (median)")
    c.write_json(args.json, {"benchmark": "ingest_throughput", "machine": c.machine_info(), "results": results,
                             "elapsed_s": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
