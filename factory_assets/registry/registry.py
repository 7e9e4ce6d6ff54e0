"""The model registry: versions and their history in the warehouse, aliases as small JSON pointer files.

A version is one trained candidate: a monotonic integer id, the sha256 of its manifest (its identity), the
partition day it was trained for, a status and the reason for it.  Statuses:

``candidate``  trained, every gate passed, not promoted (yet)
``champion``   the served model (exactly one at a time, also named by the ``champion`` alias)
``retired``    a former champion
``rejected``   a gate failed; ``reason`` names the failing check(s)

Every status change is appended to ``model_events`` (who/what/why), so the promotion history is never lost.
The ``champion`` alias is ``<home>/<source>/aliases/champion.json`` (``version``, ``path`` of the manifest,
``sha256`` of the manifest, ...),
replaced with ``os.replace``: a reader (the CLI, a service) never sees a half-written pointer and never needs
a warehouse connection.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd

from factory_assets.recsys.artefact import atomic_write_bytes

VERSIONS = "model_versions"
EVENTS = "model_events"
STATUSES: tuple[str, ...] = ("candidate", "champion", "retired", "rejected")
CHAMPION = "champion"
ERASED_DATA = "trained_on_erased_data"  # history action: this version must not keep serving

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {VERSIONS} (
        version INTEGER PRIMARY KEY, partition_day DATE NOT NULL, manifest_sha256 VARCHAR NOT NULL UNIQUE,
        manifest_path VARCHAR NOT NULL, status VARCHAR NOT NULL, reason VARCHAR NOT NULL,
        metrics VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
        changed_at TIMESTAMPTZ NOT NULL, version INTEGER NOT NULL, action VARCHAR NOT NULL,
        from_status VARCHAR, to_status VARCHAR NOT NULL, reason VARCHAR NOT NULL)""",
)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the registry tables if missing (idempotent)."""
    for statement in DDL:
        con.execute(statement)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def register(
    con: duckdb.DuckDBPyConnection,
    partition_day: date,
    manifest_path: Path,
    manifest_sha256: str,
    status: str,
    reason: str,
    metrics: dict,
) -> int:
    """Record a trained candidate and return its version id.

    Re-registering the same manifest (a re-run that reproduced identical bytes) returns the existing
    version and updates its status instead of creating a duplicate.

    Raises:
        ValueError: for a status outside ``candidate`` / ``rejected``.
    """
    if status not in ("candidate", "rejected"):
        raise ValueError(f"a new version is 'candidate' or 'rejected', not {status!r}")
    existing = con.execute(f"SELECT version, status FROM {VERSIONS} WHERE manifest_sha256 = ?", [manifest_sha256]).fetchone()
    if existing:
        version, old = int(existing[0]), existing[1]
        if old != CHAMPION:
            set_status(con, version, status, reason, action="re-evaluated")
        return version
    version = int(con.execute(f"SELECT coalesce(max(version), 0) + 1 FROM {VERSIONS}").fetchone()[0])
    now = _now()
    con.execute(
        f"INSERT INTO {VERSIONS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [version, partition_day, manifest_sha256, str(manifest_path), status, reason, json.dumps(metrics, sort_keys=True), now, now],
    )
    con.execute(f"INSERT INTO {EVENTS} VALUES (?, ?, 'registered', NULL, ?, ?)", [now, version, status, reason])
    return version


def set_status(con: duckdb.DuckDBPyConnection, version: int, status: str, reason: str, action: str) -> None:
    """Change a version's status and append the change to the history.

    Raises:
        ValueError: for an unknown status; LookupError: for an unknown version.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; known: {STATUSES}")
    row = con.execute(f"SELECT status FROM {VERSIONS} WHERE version = ?", [version]).fetchone()
    if row is None:
        raise LookupError(f"model version {version} is not in the registry")
    now = _now()
    con.execute(f"UPDATE {VERSIONS} SET status = ?, reason = ?, updated_at = ? WHERE version = ?", [status, reason, now, version])
    con.execute(f"INSERT INTO {EVENTS} VALUES (?, ?, ?, ?, ?, ?)", [now, version, action, row[0], status, reason])


def record_event(con: duckdb.DuckDBPyConnection, version: int, action: str, reason: str) -> None:
    """Append a history row that does not change the version's status (e.g. ``marked_stale``)."""
    row = con.execute(f"SELECT status FROM {VERSIONS} WHERE version = ?", [version]).fetchone()
    if row is None:
        raise LookupError(f"model version {version} is not in the registry")
    con.execute(f"INSERT INTO {EVENTS} VALUES (?, ?, ?, ?, ?, ?)", [_now(), version, action, row[0], row[0], reason])


def has_event(con: duckdb.DuckDBPyConnection, version: int, action: str) -> bool:
    """Whether the version's history holds an ``action`` row (e.g. ``trained_on_erased_data``)."""
    return con.execute(f"SELECT count(*) FROM {EVENTS} WHERE version = ? AND action = ?", [version, action]).fetchone()[0] > 0


def version_row(con: duckdb.DuckDBPyConnection, version: int) -> dict:
    """One version as a dict (``metrics`` parsed).  Raises LookupError if unknown."""
    frame = con.execute(f"SELECT * FROM {VERSIONS} WHERE version = ?", [version]).df()
    if frame.empty:
        raise LookupError(f"model version {version} is not in the registry")
    row = frame.iloc[0].to_dict()
    row["metrics"] = json.loads(row["metrics"])
    row["partition_day"] = pd.Timestamp(row["partition_day"]).date().isoformat()
    return row


def latest_for_day(con: duckdb.DuckDBPyConnection, partition_day: date) -> dict | None:
    """The most recently updated version trained for ``partition_day``, or None."""
    row = con.execute(
        f"SELECT version FROM {VERSIONS} WHERE partition_day = ? ORDER BY updated_at DESC, version DESC LIMIT 1",
        [partition_day],
    ).fetchone()
    return version_row(con, int(row[0])) if row else None


def versions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """All versions, oldest first."""
    return con.execute(f"SELECT version, partition_day, status, reason, manifest_sha256 FROM {VERSIONS} ORDER BY version").df()


def history(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every status change, oldest first."""
    return con.execute(f"SELECT * FROM {EVENTS} ORDER BY changed_at, version").df()


def alias_path(aliases_dir: Path, alias: str = CHAMPION) -> Path:
    return aliases_dir / f"{alias}.json"


def read_alias(aliases_dir: Path, alias: str = CHAMPION) -> dict | None:
    """The alias pointer (``version``, ``path``, ``sha256``, ...) or None when there is none yet."""
    path = alias_path(aliases_dir, alias)
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def promote(con: duckdb.DuckDBPyConnection, aliases_dir: Path, version: int, reason: str, pointer_extra: dict) -> dict:
    """Make ``version`` the champion: retire the old one, move the alias atomically, record both.

    The registry rows change in one transaction; the alias file is replaced after the commit, so a crash in
    between leaves the old alias valid (the registry then says champion for a version the alias does not
    name yet, and the next promotion or a re-run repairs it).

    Returns:
        the new pointer as written.
    """
    row = version_row(con, version)
    old = read_alias(aliases_dir)
    con.execute("BEGIN TRANSACTION")
    try:
        for (other,) in con.execute(f"SELECT version FROM {VERSIONS} WHERE status = ? AND version <> ?", [CHAMPION, version]).fetchall():
            set_status(con, int(other), "retired", f"replaced by version {version}", action="retired")
        if row["status"] != CHAMPION:
            set_status(con, version, CHAMPION, reason, action="promoted")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    pointer = {
        "alias": CHAMPION,
        "version": version,
        "path": row["manifest_path"],
        "sha256": row["manifest_sha256"],
        "partition_day": row["partition_day"],
        "promoted_at": _now().isoformat(),
        "reason": reason,
        "previous_version": old["version"] if old else None,
        **pointer_extra,
    }
    atomic_write_bytes(alias_path(aliases_dir), (json.dumps(pointer, indent=2, sort_keys=True) + "\n").encode())
    return pointer
