"""The model registry: versions and their history in the warehouse, aliases as small JSON pointer files.

A version is one trained candidate: a monotonic integer id, the sha256 of its manifest (its identity), the
partition day it was trained for, a status and the reason for it.  Statuses:

``candidate``  trained, every gate passed, not promoted (yet)
``shadow``     safe to serve and better than the baselines but not clearly better than the champion: scored
               on live traffic beside it (also named by the ``shadow`` alias)
``champion``   the served model (exactly one at a time, also named by the ``champion`` alias)
``retired``    a former champion
``rejected``   a gate failed; ``reason`` names the failing check(s)
``backtest``   every gate passed, but its day is older than the champion's: recorded, never promoted over it

Every status change is appended to ``model_events`` (who/what/why), so the promotion history is never lost.
Re-registering a manifest the registry already holds (a re-run of the same day that reproduced identical
bytes) may only re-decide a version that never served: see :func:`register` for the transitions.
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

from factory_assets.ml.recsys.artefact import atomic_write_bytes

VERSIONS = "model_versions"
DECISIONS = "promotion_decisions"
EVENTS = "model_events"
STATUSES: tuple[str, ...] = ("candidate", "shadow", "champion", "retired", "rejected", "backtest")
CHAMPION = "champion"
SHADOW = "shadow"
ERASED_DATA = "trained_on_erased_data"  # history action: this version must not keep serving
REPRODUCED = "reproduced"  # history action: a re-run registered this manifest again and its status was kept
# The statuses a re-registration may move a version between (the re-run's verdict decides); every other
# status (champion, retired) and any version trained on erased data is kept: see register().
REEVALUABLE: tuple[str, ...] = ("candidate", "shadow", "rejected", "backtest")

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {VERSIONS} (
        version INTEGER PRIMARY KEY, partition_day DATE NOT NULL, manifest_sha256 VARCHAR NOT NULL UNIQUE,
        manifest_path VARCHAR NOT NULL, status VARCHAR NOT NULL, reason VARCHAR NOT NULL,
        metrics VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {DECISIONS} (
        version INTEGER NOT NULL, partition_day DATE NOT NULL, decided_at TIMESTAMPTZ NOT NULL,
        verdict VARCHAR NOT NULL, reason VARCHAR NOT NULL, record VARCHAR NOT NULL, markdown VARCHAR NOT NULL)""",
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

    ``status`` is the verdict of the candidate's gates: one of :data:`REEVALUABLE` (``candidate``: promote,
    ``shadow``, ``rejected``, ``backtest``).

    Re-registering the same manifest (a re-run that reproduced identical bytes, e.g. the same partition run
    again) returns the existing version, never a duplicate.  Whether the new verdict may change its status
    depends on where the version stands:

    ==============  ================================  ===================================================
    from status     a re-registration may set          why
    ==============  ================================  ===================================================
    ``candidate``   any of :data:`REEVALUABLE`         never served: the latest run of the gates decides
                    (``candidate``/``shadow``/         (a new champion or policy may change the verdict)
                    ``rejected``/``backtest``)
    ``shadow``      any of :data:`REEVALUABLE`         the same (the ``shadow`` alias is moved only by
                                                       :func:`designate_shadow` / :func:`promote`;
                                                       ``shadow_evaluation`` promotes only a ``shadow``)
    ``rejected``    any of :data:`REEVALUABLE`         the same (e.g. a re-run under a relaxed policy)
    ``backtest``    any of :data:`REEVALUABLE`         the same (never served either)
    ``champion``    nothing: stays ``champion``        it is serving; only a promotion or a rollback moves
                                                       the champion
    ``retired``     nothing: stays ``retired``         superseded or rolled back: a re-run must not
                                                       resurrect it (bring it back on purpose with
                                                       ``factory models rollback --to VERSION``)
    any, if marked  nothing: the status is kept        it must never serve again
    ``trained_on_
    erased_data``
    ==============  ================================  ===================================================

    A permitted re-decision is recorded as a ``re-evaluated`` event (old -> new status, the new reason) and
    replaces the version's reason.  A kept status is recorded as one ``reproduced`` event (from = to = the
    kept status) whose reason names the verdict and its reason; the version's status, reason and
    ``updated_at`` are left as they were, so :func:`latest_for_day` and the champion stack are unchanged.

    Raises:
        ValueError: for a status outside :data:`REEVALUABLE`.
    """
    if status not in REEVALUABLE:
        raise ValueError(f"a new version is 'candidate', 'shadow', 'rejected' or 'backtest', not {status!r}")
    existing = con.execute(f"SELECT version, status FROM {VERSIONS} WHERE manifest_sha256 = ?", [manifest_sha256]).fetchone()
    if existing:
        version, old = int(existing[0]), existing[1]
        kept = kept_on_reregistration(con, version, old)
        if kept is None:
            set_status(con, version, status, reason, action="re-evaluated")
        else:
            record_event(con, version, REPRODUCED, f"re-run reproduced this manifest; verdict {status}: {reason}; {kept}")
        return version
    version = int(con.execute(f"SELECT coalesce(max(version), 0) + 1 FROM {VERSIONS}").fetchone()[0])
    now = _now()
    con.execute(
        f"INSERT INTO {VERSIONS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [version, partition_day, manifest_sha256, str(manifest_path), status, reason, json.dumps(metrics, sort_keys=True, default=str), now, now],
    )
    con.execute(f"INSERT INTO {EVENTS} VALUES (?, ?, 'registered', NULL, ?, ?)", [now, version, status, reason])
    return version


def kept_on_reregistration(con: duckdb.DuckDBPyConnection, version: int, status: str | None = None) -> str | None:
    """Why a re-registration must keep ``version``'s status (see :func:`register`), or None if it may re-decide it.

    ``status`` is the version's current status when the caller already read it.
    """
    if status is None:
        status = version_row(con, version)["status"]
    if has_event(con, version, ERASED_DATA):
        return f"status {status} kept: trained on erased data"
    if status not in REEVALUABLE:
        return f"status {status} kept: a re-run does not change a {status} version"
    return None


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


def record_decision(
    con: duckdb.DuckDBPyConnection, version: int, partition_day: date, verdict: str, reason: str, record: dict, markdown: str
) -> None:
    """Append the promotion decision record of a candidate (kept as history: re-evaluations add rows)."""
    con.execute(
        f"INSERT INTO {DECISIONS} VALUES (?, ?, ?, ?, ?, ?, ?)",
        [version, partition_day, _now(), verdict, reason, json.dumps(record, sort_keys=True, default=str), markdown],
    )


def latest_decision(con: duckdb.DuckDBPyConnection, version: int) -> dict | None:
    """The newest promotion decision record of ``version`` (``verdict``, ``evaluation``, ``champion``, ``gates``,
    ``policy``: what :func:`record_decision` stored), or None.  A re-run decides again; this is its record."""
    row = con.execute(f"SELECT record FROM {DECISIONS} WHERE version = ? ORDER BY decided_at DESC LIMIT 1",
                      [version]).fetchone()
    return None if row is None else json.loads(row[0])


def decisions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every promotion decision, oldest first: version, partition_day, decided_at, verdict, reason."""
    return con.execute(f"SELECT version, partition_day, decided_at, verdict, reason FROM {DECISIONS} ORDER BY decided_at, version").df()


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


def _write_alias(aliases_dir: Path, alias: str, pointer: dict) -> None:
    atomic_write_bytes(alias_path(aliases_dir, alias), (json.dumps(pointer, indent=2, sort_keys=True) + "\n").encode())


def _move_alias(
    con: duckdb.DuckDBPyConnection, aliases_dir: Path, alias: str, version: int, reason: str, action: str,
    pointer_extra: dict | None, actor: str,
) -> dict:
    """Give ``alias`` (a status too) to ``version``: the previous holder is retired, the file replaced last."""
    row = version_row(con, version)
    old = read_alias(aliases_dir, alias)
    con.execute("BEGIN TRANSACTION")
    try:
        holders = con.execute(f"SELECT version FROM {VERSIONS} WHERE status = ? AND version <> ?", [alias, version]).fetchall()
        for (other,) in holders:
            set_status(con, int(other), "retired", f"{alias} replaced by version {version}", action="retired")
        if row["status"] != alias:
            set_status(con, version, alias, reason, action=action)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    pointer = {
        "alias": alias,
        "version": version,
        "path": row["manifest_path"],
        "sha256": row["manifest_sha256"],
        "partition_day": row["partition_day"],
        "promoted_at": _now().isoformat(),
        "reason": reason,
        "actor": actor,
        "previous_version": old["version"] if old else None,
        **(pointer_extra or {}),
    }
    _write_alias(aliases_dir, alias, pointer)
    return pointer


def promote(
    con: duckdb.DuckDBPyConnection, aliases_dir: Path, version: int, reason: str, pointer_extra: dict | None = None,
    action: str = "promoted", actor: str = "factory",
) -> dict:
    """Make ``version`` the champion: retire the old one, move the alias atomically, record both.

    The registry rows change in one transaction; the alias file is replaced after the commit, so a crash in
    between leaves the old alias valid (the registry then says champion for a version the alias does not
    name yet, and the next promotion or a re-run repairs it).  A promoted shadow stops being the shadow.

    Returns:
        the new pointer as written.
    """
    pointer = _move_alias(con, aliases_dir, CHAMPION, version, reason, action, pointer_extra, actor)
    shadow = read_alias(aliases_dir, SHADOW)
    if shadow is not None and shadow["version"] == version:
        alias_path(aliases_dir, SHADOW).unlink()
    return pointer


def designate_shadow(
    con: duckdb.DuckDBPyConnection, aliases_dir: Path, version: int, reason: str, pointer_extra: dict | None = None
) -> dict | None:
    """Make ``version`` the shadow (scored on live traffic beside the champion); the old shadow is retired.

    A version whose status a re-registration keeps (the champion, a retired version, one trained on erased
    data: :func:`kept_on_reregistration`) is not made the shadow: nothing changes and the current shadow
    pointer (None if there is none) is returned.  So a re-run whose verdict is ``shadow`` cannot resurrect a
    retired version through the alias either.
    """
    if kept_on_reregistration(con, version) is not None:
        return read_alias(aliases_dir, SHADOW)
    return _move_alias(con, aliases_dir, SHADOW, version, reason, "shadowed", pointer_extra, actor="factory")


def rollback(
    con: duckdb.DuckDBPyConnection, aliases_dir: Path, reason: str, actor: str, to_version: int | None = None
) -> dict:
    """Restore the previous champion (or ``to_version``) after verifying its manifest and artefact.

    The previous champion is the first of :func:`rollback_candidates` (the champion stack below the current
    one: no ping-pong between two versions).  Recorded as ``rolled_back`` with ``actor`` and ``reason``.

    Raises:
        LookupError: no champion to roll back from, or no eligible earlier champion.
        ValueError: ``to_version`` is rejected, trained on erased data, or already the champion.
        ArtefactIntegrityError: the target's files do not match their digests.
    """
    from factory_assets.ml.recsys.artefact import load_manifest_model

    current = read_alias(aliases_dir)
    if current is None:
        raise LookupError("there is no champion to roll back from")
    if to_version is None:
        eligible = rollback_candidates(con, int(current["version"]))
        if not eligible:
            raise LookupError(f"no earlier eligible champion to roll back to from version {current['version']}")
        to_version = eligible[0]
    row = version_row(con, to_version)
    if to_version == current["version"]:
        raise ValueError(f"version {to_version} is already the champion")
    if row["status"] == "rejected" or has_event(con, to_version, ERASED_DATA):
        raise ValueError(f"version {to_version} cannot serve: {row['status']} ({row['reason']})")
    load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
    return promote(
        con, aliases_dir, to_version, f"rollback from v{current['version']} by {actor}: {reason}",
        {"metrics": row["metrics"].get("evaluation", {}).get("model", {})},
        action="rolled_back", actor=actor,
    )


# --------------------------------------------------------------------------- champion stack, rollback targets
def champion_stack(con: duckdb.DuckDBPyConnection) -> list[int]:
    """The champions still "below" the current one, oldest first; the last entry is the current champion.

    Replays the history: a promotion pushes its version; a rollback pops the champion it rolled back from
    (that one was judged bad) and then truncates the stack to the last occurrence of its target (or pushes the
    target when it was never champion).  So after ``v1, v2, v3`` and a rollback to ``v2`` the stack is
    ``[v1, v2]``: the next rollback goes to ``v1``, never back to ``v3`` (no ping-pong).
    """
    rows = con.execute(
        f"SELECT version, action FROM {EVENTS} WHERE to_status = ? AND action IN ('promoted', 'rolled_back') "
        "ORDER BY changed_at, rowid",
        [CHAMPION],
    ).fetchall()
    stack: list[int] = []
    for version, action in rows:
        version = int(version)
        if action == "rolled_back":
            if stack:
                stack.pop()
            if version in stack:
                del stack[len(stack) - stack[::-1].index(version):]
            else:
                stack.append(version)
        else:
            stack.append(version)
    return stack


def rollback_candidates(con: duckdb.DuckDBPyConnection, current_version: int) -> list[int]:
    """Versions a rollback from ``current_version`` may restore, best (most recent) first.

    The :func:`champion_stack` below the current champion, newest first, without duplicates, the current
    version, rejected versions and versions trained on erased data.  Empty when nothing is eligible.
    """
    stack = champion_stack(con)
    if stack and stack[-1] == current_version:
        stack = stack[:-1]
    out: list[int] = []
    for version in reversed(stack):
        if version == current_version or version in out:
            continue
        if version_row(con, version)["status"] == "rejected" or has_event(con, version, ERASED_DATA):
            continue
        out.append(version)
    return out
