"""How the warehouse's tables are stored: one DuckDB file (the default) or immutable per-partition Parquet files.

``duckdb`` (default)
    ``<root>/warehouse.duckdb``.  DuckDB lets one process at a time hold a file read-write, so every step that
    opens it shares the single-slot ``warehouse`` pool: partitions are written one after another.
``parquet``
    ``<root>/lake/<table>/...``: one Parquet file per partition of each table (``raw_events/2024-11-11.parquet``,
    ``partition_ledger/raw_events/2024-11-11.parquet``), written by DuckDB to a temporary name and moved into
    place with :func:`os.replace` (atomic on one file system), read back by DuckDB's ``read_parquet``.  Any number
    of processes may write *different* partitions at the same time and read while another writes: a reader sees a
    partition's old file or its new one, never half of one.  This is what the local cluster
    (``deploy/local-cluster``) runs on; measured against the DuckDB file and DuckLake in ``docs/storage.md``.

The writers of both halves' tables say the same three things whichever storage holds them::

    with storage.transaction(con):                              # BEGIN ... COMMIT (ROLLBACK on error)
        storage.clear(con, RAW_EVENTS, partition_day=day)       # DELETE FROM raw_events WHERE partition_day = ?
        con.execute(f"INSERT INTO {storage.into(con, RAW_EVENTS)} SELECT ...")

In ``parquet`` storage a connection is an in-memory DuckDB database.  Each table ``t`` is a view over its Parquet
files *and* a staging table ``stage.t``: inserts go to the staging table, :func:`clear` records the cleared keys,
and the view shows the staged rows in place of the lake's rows of every cleared or staged key, so reads inside a
write see that write (the data version of a just-inserted day, say).  On commit every touched partition is
written as one new file (or its file removed when it has no rows), the partition ledger's files last; then the
staging tables are emptied.  On error nothing is published.  The moves of one commit are written to a journal
first, so a process killed while moving files leaves a journal that the next writer's connection completes (all
of a commit's partitions or none); a process killed earlier leaves at most ``*.part`` temporary files, which no
reader matches and a writer removes once they are an hour old.

Each table declares its *partition key* (:func:`declare`): the columns whose values name its files.  Tables
with an empty key are append-only logs (one new file per commit); :func:`replace_table` tables are whole-table
snapshots (one file).  Identifiers (table and column names) come from code only; values are SQL parameters or
become file names through :func:`_segment`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb

STAGE = "stage"
SCHEMA_FILE = "_schema.parquet"
PART_SUFFIX = ".part"
_STALE_PART_S = 3600.0
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]{0,99}$")
_LEDGER = "partition_ledger"  # published last (feature_store.contract.LEDGER; not imported: the contract imports us)

#: table -> partition key columns (empty: append-only log).  Filled by the modules that own the DDL.
_KEYS: dict[str, tuple[str, ...]] = {}
#: tables stored as one whole-table file (``replace_table``), e.g. the online feature views
_WHOLE = "__whole__"


def declare(table: str, keys: Sequence[str]) -> None:
    """Declare ``table``'s partition key (the columns whose values name its Parquet files); idempotent.

    ``keys`` empty: an append-only table (every commit adds one file).  Raises ValueError on a conflicting
    second declaration.
    """
    keys = tuple(keys)
    if _KEYS.get(table, keys) != keys:
        raise ValueError(f"table {table} already declared with key {_KEYS[table]}, not {keys}")
    _KEYS[table] = keys


# --------------------------------------------------------------------------------------------- write API

@dataclass
class _Lake:
    path: Path
    tables: dict[str, tuple[str, ...] | str] = field(default_factory=dict)  # name -> key or _WHOLE
    cleared: dict[str, set[tuple]] = field(default_factory=dict)  # table -> keys cleared in this transaction
    whole: set[str] = field(default_factory=set)  # whole tables replaced in this transaction
    depth: int = 0


_LAKES: dict[int, _Lake] = {}  # id(connection) -> its lake, while the connection is open


def _lake(con: duckdb.DuckDBPyConnection) -> _Lake | None:
    return _LAKES.get(id(con))


def into(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """The name an ``INSERT`` into ``table`` must use: ``table`` itself, or its staging table in ``parquet``."""
    lake = _lake(con)
    if lake is None:
        return table
    if table not in lake.tables:
        raise KeyError(f"table {table} is not in this warehouse")
    if lake.depth == 0:
        raise RuntimeError(f"insert into {table} outside storage.transaction(): it would never be published")
    return f"{STAGE}.{table}"


def clear(con: duckdb.DuckDBPyConnection, table: str, **key) -> None:
    """Delete the rows of one partition of ``table`` (``key``: its partition key's columns and values).

    ``duckdb``: ``DELETE FROM table WHERE col = ? AND ...``.  ``parquet`` (inside :func:`transaction`): the
    partition's staged rows are deleted and the key is marked cleared, so the view hides the lake's rows of it
    and the commit replaces (or removes) its file.
    """
    where = " AND ".join(f"{column} = ?" for column in key)
    lake = _lake(con)
    if lake is None:
        con.execute(f"DELETE FROM {table} WHERE {where}", list(key.values()))
        return
    keys = lake.tables.get(table)
    if keys != tuple(key):
        raise KeyError(f"clear({table}) needs its partition key {keys}, got {tuple(key)}")
    if lake.depth == 0:
        raise RuntimeError(f"clear({table}) outside storage.transaction()")
    con.execute(f"DELETE FROM {STAGE}.{table} WHERE {where}", list(key.values()))
    con.execute(f"INSERT INTO {STAGE}.{_cleared(table)} VALUES ({', '.join('?' for _ in key)})", list(key.values()))
    lake.cleared.setdefault(table, set()).add(tuple(key.values()))


def delete_where(con: duckdb.DuckDBPyConnection, table: str, where: str, params: Sequence = ()) -> int:
    """Delete the rows of ``table`` matching ``where`` (SQL from code; values in ``params``); return how many.

    ``parquet``: every partition holding a matching row is rewritten without it (or removed when nothing is
    left); must run inside :func:`transaction`.
    """
    lake = _lake(con)
    count = con.execute(f"SELECT count(*) FROM {table} WHERE {where}", list(params)).fetchone()[0]
    if lake is None or not count:
        if lake is None:
            con.execute(f"DELETE FROM {table} WHERE {where}", list(params))
        return int(count)
    keys = lake.tables.get(table)
    if lake.depth == 0:
        raise RuntimeError(f"delete_where({table}) outside storage.transaction()")
    if keys == _WHOLE:
        con.execute(f"CREATE TEMP TABLE _kept_rows AS SELECT * FROM {table} WHERE NOT ({where})", list(params))
        try:
            replace_table(con, table, "SELECT * FROM _kept_rows")
        finally:
            con.execute("DROP TABLE _kept_rows")
        return int(count)
    if not keys:
        raise RuntimeError(f"{table} is an append-only log: its rows are not deleted")
    cols = ", ".join(keys)
    touched = con.execute(f"SELECT DISTINCT {cols} FROM {table} WHERE {where}", list(params)).fetchall()
    # the kept rows of every touched partition, read before the partitions are cleared (the view then hides them)
    same_key = " AND ".join(f"m.{k} IS NOT DISTINCT FROM l.{k}" for k in keys)  # NULL (undated) keys too
    con.execute(f"CREATE TEMP TABLE _kept_rows AS SELECT * FROM {table} l WHERE NOT ({where}) AND EXISTS "
                f"(SELECT 1 FROM {table} m WHERE ({where}) AND {same_key})", [*params, *params])
    try:
        for values in touched:
            clear(con, table, **dict(zip(keys, values)))
        con.execute(f"INSERT INTO {STAGE}.{table} BY NAME SELECT * FROM _kept_rows")
    finally:
        con.execute("DROP TABLE _kept_rows")
    return int(count)


def replace_table(con: duckdb.DuckDBPyConnection, table: str, select_sql: str, params: Sequence | Mapping = ()) -> None:
    """``CREATE OR REPLACE TABLE table AS select_sql`` (``params``: positional, or a mapping of named ones); in
    ``parquet`` the table is one whole-table file, replaced on commit (must run inside :func:`transaction`)."""
    lake = _lake(con)
    params = dict(params) if isinstance(params, Mapping) else list(params)
    if lake is None:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS {select_sql}", params)
        return
    if lake.depth == 0:
        raise RuntimeError(f"replace_table({table}) outside storage.transaction()")
    if lake.tables.get(table, _WHOLE) != _WHOLE:
        raise KeyError(f"{table} is a partitioned table, not a whole-table snapshot")
    con.execute(f"CREATE OR REPLACE TABLE {STAGE}.{table} AS {select_sql}", params)
    lake.tables[table] = _WHOLE
    lake.whole.add(table)
    con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {STAGE}.{table}")


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One atomic write: ``BEGIN``/``COMMIT`` (``ROLLBACK`` and re-raise on error).

    ``parquet``: the staged partitions are published on success (each partition's file replaced atomically,
    the ledger's files last; see the module docstring), then the staging tables are emptied; on error nothing
    is published.  Not re-entrant.
    """
    lake = _lake(con)
    if lake is not None and lake.depth:
        raise RuntimeError("storage.transaction() is not re-entrant")
    con.execute("BEGIN TRANSACTION")
    if lake is not None:
        lake.depth = 1
    try:
        yield
        if lake is not None:
            _publish(con, lake)
            con.execute("ROLLBACK")  # the staged rows are published: drop them, the views read the lake again
        else:
            con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    finally:
        if lake is not None:
            lake.depth = 0
            lake.cleared.clear()
            if lake.whole:
                _refresh_whole_views(con, lake)
                lake.whole.clear()


# ---------------------------------------------------------------------------------------------- publish

def _segment(value) -> str:
    """A file-name segment for a key value: ISO date, or a safe identifier-like text, else ``h-<sha256[:32]>``."""
    if value is None:
        return "undated"
    if isinstance(value, datetime):
        return value.isoformat().replace(":", "")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    if _SAFE.match(text) and text not in (".", ".."):
        return text
    return "h-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _file_of(lake: _Lake, table: str, values: tuple) -> Path:
    *dirs, last = [_segment(v) for v in values]
    return lake.path.joinpath(table, *dirs, last + ".parquet")


def _publish(con: duckdb.DuckDBPyConnection, lake: _Lake) -> None:
    """Write every touched partition to a temporary file, then move all of them into place (ledger last).

    Partitions of no day (NULL key: the undated quarantine rows, kept across writers) are merged with the lake's
    rows under the publish lock, so two writers adding different rows to one never lose either's."""
    moves: list[tuple[Path, Path | None]] = []  # (final path, temporary file or None = remove)
    merged: list[tuple[str, tuple[str, ...], tuple]] = []
    try:
        for table in sorted(lake.tables, key=lambda t: t == _LEDGER):
            keys = lake.tables[table]
            if keys == _WHOLE:
                if table in lake.whole:
                    sql = f"SELECT * FROM {STAGE}.{table}"
                    moves.append(_stage_file(con, table, sql, (), lake.path / table / "table.parquet"))
                    moves.append(_stage_file(con, table, sql + " LIMIT 0", (), lake.path / table / SCHEMA_FILE))
                continue
            staged = con.execute(f"SELECT count(*) FROM {STAGE}.{table}").fetchone()[0]
            if not keys:
                if staged:
                    name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
                    moves.append(_stage_file(con, table, f"SELECT * FROM {STAGE}.{table}", (), lake.path / table / name))
                continue
            cols = ", ".join(keys)
            touched = set(lake.cleared.get(table, ()))
            if staged:
                touched |= set(con.execute(f"SELECT DISTINCT {cols} FROM {STAGE}.{table}").fetchall())
            for values in sorted(touched, key=lambda v: tuple((x is None, str(x)) for x in v)):
                if any(v is None for v in values):
                    merged.append((table, keys, values))
                else:
                    moves.append(_partition_file(con, lake, table, keys, values))
        with _publish_lock(lake.path):
            _recover_locked(lake.path)  # a dead writer's commit goes before ours
            for table, keys, values in merged:  # read the lake's rows of the key now, under the lock
                moves.append(_partition_file(con, lake, table, keys, values))
            moves.sort(key=lambda move: move[0].is_relative_to(lake.path / _LEDGER))
            journal = _write_journal(lake.path, moves)
            _apply(moves)
            journal.unlink()
    except BaseException:
        for _final, temporary in moves:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
        raise


def _write_journal(path: Path, moves: list[tuple[Path, Path | None]]) -> Path:
    """The redo log of one publish: every move, written (atomically) before the first file moves, removed after
    the last.  A process killed in between leaves it; the next connection finishes the moves
    (:func:`_recover`), so a commit's partitions are all published or none is."""
    journal = path / f".journal-{uuid.uuid4().hex}.json"
    temporary = journal.with_suffix(PART_SUFFIX)
    temporary.write_text(json.dumps([[str(f), None if t is None else str(t)] for f, t in moves]), encoding="utf-8")
    os.replace(temporary, journal)
    return journal


def _apply(moves: list[tuple[Path, Path | None]]) -> None:
    for final, temporary in moves:
        if temporary is None:
            final.unlink(missing_ok=True)
        elif temporary.exists():  # (a recovered journal: moves done before the crash are skipped)
            os.replace(temporary, final)


def _recover(path: Path) -> int:
    """Finish the publishes a killed process left half done (their journals); return how many."""
    if not any(path.glob(".journal-*.json")):
        return 0
    with _publish_lock(path):
        return _recover_locked(path)


def _recover_locked(path: Path) -> int:
    """:func:`_recover` with the publish lock held.  Journals are written and applied only under that lock, so
    one found here is a dead writer's, committed before any publish that comes after it: applying it first (at
    every publish, and at a writer's connection) keeps the order of commits."""
    done = 0
    for journal in sorted(path.glob(".journal-*.json")):
        moves = [(Path(f), None if t is None else Path(t)) for f, t in json.loads(journal.read_text("utf-8"))]
        _apply(moves)
        journal.unlink()
        done += 1
    return done


def _partition_file(con, lake: _Lake, table: str, keys: tuple[str, ...], values: tuple) -> tuple[Path, Path | None]:
    match = " AND ".join(f"{k} IS NOT DISTINCT FROM ?" for k in keys)
    final = _file_of(lake, table, values)
    params = list(values)
    if any(v is None for v in values) and values not in lake.cleared.get(table, ()):
        # rows of no partition (undated quarantine rows): the lake's rows of the key stay, the staged ones join them
        sql = (f"SELECT * FROM {STAGE}.{table} WHERE {match} UNION ALL BY NAME "
               f"SELECT * FROM {_lake_rows(lake, table)} WHERE {match}")
        params = params + params
    else:
        sql = f"SELECT * FROM {STAGE}.{table} WHERE {match}"
    rows = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
    if not rows:
        return final, None
    return _stage_file(con, table, sql, params, final)


def _stage_file(con, table: str, sql: str, params: Sequence, final: Path) -> tuple[Path, Path]:
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.parent / f".{final.stem}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
    con.execute(f"COPY ({sql}) TO '{_quote_path(temporary)}' (FORMAT parquet, COMPRESSION zstd)", list(params))
    return final, temporary


def _quote_path(path: Path) -> str:
    return str(path).replace("'", "''")


@contextmanager
def _publish_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<lake>/.publish.lock`` while files move: concurrent writers' sets of files
    never interleave (held for the renames only, milliseconds; the kernel drops it if the process dies)."""
    with open(path / ".publish.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- connect

def _cleared(table: str) -> str:
    return f"__cleared_{table}"


def _glob(lake: _Lake, table: str) -> str:
    return _quote_path(lake.path / table) + "/**/*.parquet"


def _lake_rows(lake: _Lake, table: str) -> str:
    return f"read_parquet('{_glob(lake, table)}', hive_partitioning = false, union_by_name = true)"


def _remove_stale_parts(path: Path) -> None:
    cutoff = time.time() - _STALE_PART_S
    for part in path.rglob(f".*{PART_SUFFIX}"):
        try:
            if part.stat().st_mtime < cutoff:
                part.unlink()
        except OSError:
            pass


@contextmanager
def connect_lake(path: Path, ensure: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
                 temp_directory: Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection over the Parquet lake at ``path``, session time zone UTC.

    ``ensure``: creates the writer's tables (its ``CREATE TABLE IF NOT EXISTS`` DDL) - they become the staging
    tables, a ``_schema.parquet`` file per table (zero rows: so every table reads, typed, before its first
    partition) and the views; every declared table needs a partition key (:func:`declare`).  Without it the
    connection is a reader's: a view for every table the lake holds.

    Raises:
        KeyError: ``ensure`` created a table that has no declared partition key.
    """
    path.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:")
    lake = _Lake(path)
    try:
        con.execute("SET TimeZone = 'UTC'")
        if temp_directory is not None:
            con.execute(f"SET temp_directory = '{_quote_path(temp_directory)}'")
        con.execute(f"CREATE SCHEMA {STAGE}")
        if ensure is not None:
            _recover(path)
            _remove_stale_parts(path)
            con.execute(f"USE memory.{STAGE}")
            try:
                ensure(con)
            finally:
                con.execute("USE memory.main")
            staged = [r[0] for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? ORDER BY table_name", [STAGE]).fetchall()]
            for table in staged:
                if table not in _KEYS:
                    raise KeyError(f"table {table} has no partition key declared (storage.declare)")
                lake.tables[table] = _KEYS[table]
                schema_file = path / table / SCHEMA_FILE
                if not schema_file.exists():
                    _, temporary = _stage_file(con, table, f"SELECT * FROM {STAGE}.{table} LIMIT 0", (), schema_file)
                    os.replace(temporary, schema_file)
        for table_dir in sorted(p for p in path.iterdir() if p.is_dir() and (p / SCHEMA_FILE).exists()):
            table = table_dir.name
            if table in lake.tables:
                _writer_view(con, lake, table)
                continue
            if ensure is not None and (table_dir / "table.parquet").exists():
                lake.tables[table] = _WHOLE  # a snapshot table (online feature view) this writer did not declare
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM {_lake_rows(lake, table)}")
        if ensure is not None:
            _LAKES[id(con)] = lake
        yield con
    finally:
        _LAKES.pop(id(con), None)
        con.close()


def _writer_view(con, lake: _Lake, table: str) -> None:
    keys = lake.tables[table]
    if keys == _WHOLE:
        return
    if not keys:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {STAGE}.{table} UNION ALL BY NAME "
                    f"SELECT * FROM {_lake_rows(lake, table)}")
        return
    types = dict(con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = ? AND table_name = ?",
        [STAGE, table]).fetchall())
    con.execute(f"CREATE TABLE {STAGE}.{_cleared(table)} ({', '.join(f'{k} {types[k]}' for k in keys)})")
    # a cleared key hides the lake's rows of it, NULL included; staged rows hide those of their own (non-NULL)
    # key only: the rows of no partition (undated quarantine rows) are added to, not replaced, unless cleared
    cleared = " AND ".join(f"x.{k} IS NOT DISTINCT FROM l.{k}" for k in keys)
    staged = " AND ".join(f"x.{k} = l.{k}" for k in keys)
    con.execute(
        f"CREATE VIEW {table} AS SELECT * FROM {STAGE}.{table} UNION ALL BY NAME "
        f"SELECT * FROM {_lake_rows(lake, table)} l "
        f"WHERE NOT EXISTS (SELECT 1 FROM {STAGE}.{_cleared(table)} x WHERE {cleared}) "
        f"AND NOT EXISTS (SELECT 1 FROM {STAGE}.{table} x WHERE {staged})"
    )


def _refresh_whole_views(con, lake: _Lake) -> None:
    """After a transaction that replaced whole tables: their views read the lake again (or vanish, when the
    transaction failed before the table's first file)."""
    for table in lake.whole:
        con.execute(f"DROP TABLE IF EXISTS {STAGE}.{table}")
        if (lake.path / table / SCHEMA_FILE).exists():
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {_lake_rows(lake, table)}")
        else:
            con.execute(f"DROP VIEW IF EXISTS {table}")
            lake.tables.pop(table, None)
