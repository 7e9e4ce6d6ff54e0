"""The model registry: versions and their history in a SQL store, aliases as small JSON pointer files.

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
Where it lives: its own SQL store, never the warehouse.  By default the SQLite file
``<home>/<source>/registry.db`` (:func:`default_url`; WAL journal and a busy timeout, so several processes --
Dagster runs, ``factory models``, the service's ``/admin/rollback`` -- read and write it concurrently);
in a deployment any SQLAlchemy URL (PostgreSQL), from ``FACTORY_REGISTRY_URL`` or the ``registry`` resource.
Every function takes a :class:`sqlalchemy.engine.Connection` from :func:`connect` (autocommit: each call's
writes are committed when it returns; multi-row changes run in one transaction).  Values are always bound
parameters.  Times are UTC (``datetime`` with ``tzinfo=UTC``), days ``datetime.date``.

The same store holds the MLOps half's other facts: the window manifest of each ``training_window`` partition
(``training_windows``: :func:`save_window_manifest`, :func:`load_window_manifest`) and the daily champion-vs-shadow
scores (``shadow_scores``: :func:`replace_shadow_scores`, :func:`shadow_scores`).  The ML half only reads the
warehouse (the feature store); everything it writes lives here.

The ``champion`` alias is ``<home>/<source>/aliases/champion.json`` (``version``, ``path`` of the manifest,
``sha256`` of the manifest, ...),
replaced with ``os.replace``: a reader (the CLI, a service) never sees a half-written pointer and never needs
a registry connection.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

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

REGISTRY_FILE = "registry.db"  # under <home>/<source>/
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for another process's write lock


class UtcDateTime(sa.types.TypeDecorator):
    """A UTC instant: stored as naive UTC on SQLite (which has no time zones), ``TIMESTAMP WITH TIME ZONE``
    elsewhere; always read back as a ``datetime`` with ``tzinfo=UTC``."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: registry times are UTC, pass a tz-aware datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


METADATA = sa.MetaData()
versions_table = sa.Table(
    VERSIONS, METADATA,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("partition_day", sa.Date, nullable=False),
    sa.Column("manifest_sha256", sa.String(128), nullable=False, unique=True),
    sa.Column("manifest_path", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON text
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)
decisions_table = sa.Table(
    DECISIONS, METADATA,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order
    sa.Column("version", sa.Integer, nullable=False, index=True),
    sa.Column("partition_day", sa.Date, nullable=False),
    sa.Column("decided_at", UtcDateTime, nullable=False),
    sa.Column("verdict", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # JSON text
    sa.Column("markdown", sa.Text, nullable=False),
)
events_table = sa.Table(
    EVENTS, METADATA,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order (ties of changed_at)
    sa.Column("changed_at", UtcDateTime, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("from_status", sa.String(32)),
    sa.Column("to_status", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)
EVENT_COLUMNS: tuple[str, ...] = ("changed_at", "version", "action", "from_status", "to_status", "reason")

# The MLOps half's other facts, kept beside the versions (one writer each: the asset named; see the functions
# at the end of this module).  Days are ``sa.Date`` like ``model_versions.partition_day`` (ISO text on SQLite).
TRAINING_WINDOWS = "training_windows"  # written by training_window, read by candidate_model and factory run
SHADOW_SCORES = "shadow_scores"  # written and read by shadow_evaluation
training_windows_table = sa.Table(
    TRAINING_WINDOWS, METADATA,
    sa.Column("partition_day", sa.Date, primary_key=True),
    sa.Column("window_start", sa.Date, nullable=False),
    sa.Column("window_end", sa.Date, nullable=False),
    sa.Column("complete", sa.Boolean, nullable=False),
    sa.Column("window_version", sa.String(128), nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),  # JSON text: feature_store.store.window_manifest's dict
    sa.Column("saved_at", UtcDateTime, nullable=False),
)
SCORE_COLUMNS: tuple[str, ...] = (
    "day", "champion_version", "shadow_version", "n_requests", "n_excluded", "n_converting",
    "champion_hit_rate_at_10", "shadow_hit_rate_at_10", "champion_ndcg_at_10", "shadow_ndcg_at_10",
    "ndcg_lift", "ndcg_lift_se", "note", "scored_at",
)
_SCORE_INTS = ("champion_version", "shadow_version", "n_requests", "n_excluded", "n_converting")
_SCORE_FLOATS = ("champion_hit_rate_at_10", "shadow_hit_rate_at_10", "champion_ndcg_at_10", "shadow_ndcg_at_10",
                 "ndcg_lift", "ndcg_lift_se")
shadow_scores_table = sa.Table(
    SHADOW_SCORES, METADATA,
    sa.Column("score_id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order
    sa.Column("day", sa.Date, nullable=False, index=True),
    sa.Column("champion_version", sa.Integer),
    sa.Column("shadow_version", sa.Integer),
    sa.Column("n_requests", sa.BigInteger, nullable=False),
    sa.Column("n_excluded", sa.BigInteger, nullable=False),
    sa.Column("n_converting", sa.BigInteger, nullable=False),
    *(sa.Column(name, sa.Double) for name in _SCORE_FLOATS),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("scored_at", UtcDateTime, nullable=False),
)

_ENGINES: dict[tuple[str, int], Engine] = {}
_SCHEMA_READY: set[str] = set()
_WRITE_LOCK_ID = 0x666163746F7279  # PostgreSQL advisory lock key of a registry write transaction ("factory")


def default_url(root: Path) -> str:
    """The SQLite URL of a source namespace's registry: ``sqlite:///<root>/registry.db`` (``root`` =
    ``<home>/<source>``)."""
    return f"sqlite:///{Path(root).expanduser().resolve() / REGISTRY_FILE}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    # WAL (readers never block the writer, nor the writer them) is stored in the file, so it is switched once.
    # The switch needs an exclusive lock and SQLite may answer SQLITE_BUSY at once, without its busy handler,
    # when two processes open a fresh file together: retry until the busy timeout instead of failing.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            if cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                break
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("could not switch the registry to WAL mode: database is locked")
        time.sleep(0.05)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def engine(url: str) -> Engine:
    """The (cached, per process) autocommit engine of a registry URL.

    SQLite: the parent folder is created, WAL mode and a busy timeout of :data:`SQLITE_BUSY_TIMEOUT_S` are set on
    every connection, and connections are not pooled (safe across the fork of a multiprocess executor).
    """
    key = (url, os.getpid())  # a pooled connection must never cross a fork (two processes on one socket)
    cached = _ENGINES.get(key)
    if cached is not None:
        return cached
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        made = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool,
                                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        sa.event.listen(made, "connect", _sqlite_pragmas)
    else:
        made = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    _ENGINES[key] = made
    return made


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A registry connection (autocommit, schema ensured), closed on exit.

    Raises:
        sqlalchemy.exc.OperationalError: the store cannot be reached (or a SQLite writer held its lock for
            longer than :data:`SQLITE_BUSY_TIMEOUT_S`).
    """
    with engine(url).connect() as con:
        if url not in _SCHEMA_READY or (con.dialect.name == "sqlite" and not _sqlite_schema_present(con)):
            ensure_schema(con)
            _SCHEMA_READY.add(url)
        yield con


def _sqlite_schema_present(con: Connection) -> bool:
    """Every registry table is in the SQLite file (one catalogue query).  A long-lived process (a Celery worker)
    may see its home deleted and made again under the same path: the per-URL cache alone would then skip the
    new file's schema."""
    names = sorted(METADATA.tables)
    found = con.exec_driver_sql(
        f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({', '.join('?' for _ in names)})",
        tuple(names)).scalar()
    return found == len(names)


def ensure_schema(con: Connection) -> None:
    """Create the registry tables if missing (idempotent)."""
    with _atomic(con):  # (on PostgreSQL under the write lock: two processes creating a fresh schema take turns)
        METADATA.create_all(con, checkfirst=True)


@contextmanager
def _atomic(con: Connection) -> Iterator[None]:
    """One transaction around the block (re-entrant: an inner block joins the outer one).

    The connection is in autocommit mode, so the transaction is opened by hand: ``BEGIN IMMEDIATE`` on SQLite
    (takes the write lock now, waiting up to the busy timeout, so a read-then-write never meets a
    concurrent writer); on PostgreSQL ``BEGIN`` and a transaction-scoped advisory lock (the same guarantee,
    released at COMMIT/ROLLBACK); ``BEGIN`` elsewhere.
    """
    depth = con.info.get("registry_tx_depth", 0)
    if depth:
        con.info["registry_tx_depth"] = depth + 1
        try:
            yield
        finally:
            con.info["registry_tx_depth"] = depth
        return
    con.exec_driver_sql("BEGIN IMMEDIATE" if con.dialect.name == "sqlite" else "BEGIN")
    con.info["registry_tx_depth"] = 1
    if con.dialect.name == "postgresql":  # the same one-writer-at-a-time as SQLite's BEGIN IMMEDIATE
        try:
            con.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_WRITE_LOCK_ID})")
        except BaseException:
            con.info["registry_tx_depth"] = 0
            con.exec_driver_sql("ROLLBACK")
            raise
    try:
        yield
    except BaseException:
        con.info["registry_tx_depth"] = 0
        con.exec_driver_sql("ROLLBACK")
        raise
    con.info["registry_tx_depth"] = 0
    con.exec_driver_sql("COMMIT")


def _frame(result: sa.engine.CursorResult) -> pd.DataFrame:
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _insert_event(con: Connection, changed_at: datetime, version: int, action: str, from_status: str | None,
                  to_status: str, reason: str) -> None:
    con.execute(sa.insert(events_table).values(
        changed_at=changed_at, version=version, action=action, from_status=from_status, to_status=to_status,
        reason=reason))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def register(
    con: Connection,
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
    for attempt in range(5):  # two writers may race for the next id on a server database: retry
        try:
            with _atomic(con):
                existing = con.execute(
                    sa.select(versions_table.c.version, versions_table.c.status)
                    .where(versions_table.c.manifest_sha256 == manifest_sha256)
                ).fetchone()
                if existing:
                    version, old = int(existing[0]), existing[1]
                    kept = kept_on_reregistration(con, version, old)
                    if kept is None:
                        set_status(con, version, status, reason, action="re-evaluated")
                    else:
                        record_event(con, version, REPRODUCED,
                                     f"re-run reproduced this manifest; verdict {status}: {reason}; {kept}")
                    return version
                version = int(con.execute(sa.select(sa.func.coalesce(sa.func.max(versions_table.c.version), 0) + 1)).scalar_one())
                now = _now()
                con.execute(sa.insert(versions_table).values(
                    version=version, partition_day=_day(partition_day), manifest_sha256=manifest_sha256,
                    manifest_path=str(manifest_path), status=status, reason=reason,
                    metrics=json.dumps(metrics, sort_keys=True, default=str), created_at=now, updated_at=now,
                ))
                _insert_event(con, now, version, "registered", None, status, reason)
                return version
        except sa.exc.IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _day(value: date | str) -> date:
    """A ``datetime.date`` from a date, a datetime or an ISO string."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def kept_on_reregistration(con: Connection, version: int, status: str | None = None) -> str | None:
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


def set_status(con: Connection, version: int, status: str, reason: str, action: str) -> None:
    """Change a version's status and append the change to the history.

    Raises:
        ValueError: for an unknown status; LookupError: for an unknown version.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; known: {STATUSES}")
    with _atomic(con):
        row = con.execute(sa.select(versions_table.c.status).where(versions_table.c.version == version)).fetchone()
        if row is None:
            raise LookupError(f"model version {version} is not in the registry")
        now = _now()
        con.execute(sa.update(versions_table).where(versions_table.c.version == version)
                    .values(status=status, reason=reason, updated_at=now))
        _insert_event(con, now, version, action, row[0], status, reason)


def record_decision(
    con: Connection, version: int, partition_day: date, verdict: str, reason: str, record: dict, markdown: str
) -> None:
    """Append the promotion decision record of a candidate (kept as history: re-evaluations add rows)."""
    con.execute(sa.insert(decisions_table).values(
        version=version, partition_day=_day(partition_day), decided_at=_now(), verdict=verdict, reason=reason,
        record=json.dumps(record, sort_keys=True, default=str), markdown=markdown,
    ))


def latest_decision(con: Connection, version: int) -> dict | None:
    """The newest promotion decision record of ``version`` (``verdict``, ``evaluation``, ``champion``, ``gates``,
    ``policy``: what :func:`record_decision` stored), or None.  A re-run decides again; this is its record."""
    row = con.execute(
        sa.select(decisions_table.c.record).where(decisions_table.c.version == version)
        .order_by(decisions_table.c.decided_at.desc(), decisions_table.c.decision_id.desc()).limit(1)
    ).fetchone()
    return None if row is None else json.loads(row[0])


def decisions(con: Connection) -> pd.DataFrame:
    """Every promotion decision, oldest first: version (int), partition_day (date), decided_at (UTC datetime),
    verdict, reason (str)."""
    t = decisions_table.c
    return _frame(con.execute(sa.select(t.version, t.partition_day, t.decided_at, t.verdict, t.reason)
                              .order_by(t.decided_at, t.version, t.decision_id)))


def record_event(con: Connection, version: int, action: str, reason: str) -> None:
    """Append a history row that does not change the version's status (e.g. ``marked_stale``).

    Raises:
        LookupError: for an unknown version.
    """
    with _atomic(con):
        row = con.execute(sa.select(versions_table.c.status).where(versions_table.c.version == version)).fetchone()
        if row is None:
            raise LookupError(f"model version {version} is not in the registry")
        _insert_event(con, _now(), version, action, row[0], row[0], reason)


def has_event(con: Connection, version: int, action: str) -> bool:
    """Whether the version's history holds an ``action`` row (e.g. ``trained_on_erased_data``)."""
    t = events_table.c
    return con.execute(sa.select(sa.func.count()).select_from(events_table)
                       .where(t.version == version, t.action == action)).scalar_one() > 0


def version_row(con: Connection, version: int) -> dict:
    """One version as a dict: ``version`` (int), ``partition_day`` (ISO str), ``manifest_sha256``,
    ``manifest_path``, ``status``, ``reason`` (str), ``metrics`` (parsed JSON), ``created_at``, ``updated_at``
    (UTC datetimes).

    Raises:
        LookupError: for an unknown version.
    """
    row = con.execute(sa.select(versions_table).where(versions_table.c.version == version)).mappings().fetchone()
    if row is None:
        raise LookupError(f"model version {version} is not in the registry")
    row = dict(row)
    row["version"] = int(row["version"])
    row["metrics"] = json.loads(row["metrics"])
    row["partition_day"] = _day(row["partition_day"]).isoformat()
    return row


def latest_for_day(con: Connection, partition_day: date) -> dict | None:
    """The most recently updated version trained for ``partition_day``, or None."""
    t = versions_table.c
    row = con.execute(
        sa.select(t.version).where(t.partition_day == _day(partition_day))
        .order_by(t.updated_at.desc(), t.version.desc()).limit(1)
    ).fetchone()
    return version_row(con, int(row[0])) if row else None


def versions(con: Connection) -> pd.DataFrame:
    """All versions, oldest first: version (int), partition_day (date), status, reason, manifest_sha256 (str)."""
    t = versions_table.c
    return _frame(con.execute(sa.select(t.version, t.partition_day, t.status, t.reason, t.manifest_sha256).order_by(t.version)))


def history(con: Connection) -> pd.DataFrame:
    """Every status change, oldest first (insertion order breaks ties): changed_at (UTC datetime), version
    (int), action, from_status (str or None), to_status, reason (str)."""
    t = events_table.c
    return _frame(con.execute(sa.select(*(t[c] for c in EVENT_COLUMNS)).order_by(t.changed_at, t.event_id)))


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
    con: Connection, aliases_dir: Path, alias: str, version: int, reason: str, action: str,
    pointer_extra: dict | None, actor: str,
) -> dict:
    """Give ``alias`` (a status too) to ``version``: the previous holder is retired, the file replaced last."""
    row = version_row(con, version)
    old = read_alias(aliases_dir, alias)
    with _atomic(con):
        t = versions_table.c
        holders = con.execute(sa.select(t.version).where(t.status == alias, t.version != version)).fetchall()
        for (other,) in holders:
            set_status(con, int(other), "retired", f"{alias} replaced by version {version}", action="retired")
        if row["status"] != alias:
            set_status(con, version, alias, reason, action=action)
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
    con: Connection, aliases_dir: Path, version: int, reason: str, pointer_extra: dict | None = None,
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
    con: Connection, aliases_dir: Path, version: int, reason: str, pointer_extra: dict | None = None
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
    con: Connection, aliases_dir: Path, reason: str, actor: str, to_version: int | None = None
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
def champion_stack(con: Connection) -> list[int]:
    """The champions still "below" the current one, oldest first; the last entry is the current champion.

    Replays the history: a promotion pushes its version; a rollback pops the champion it rolled back from
    (that one was judged bad) and then truncates the stack to the last occurrence of its target (or pushes the
    target when it was never champion).  So after ``v1, v2, v3`` and a rollback to ``v2`` the stack is
    ``[v1, v2]``: the next rollback goes to ``v1``, never back to ``v3`` (no ping-pong).
    """
    t = events_table.c
    rows = con.execute(
        sa.select(t.version, t.action).where(t.to_status == CHAMPION, t.action.in_(("promoted", "rolled_back")))
        .order_by(t.changed_at, t.event_id)
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


def rollback_candidates(con: Connection, current_version: int) -> list[int]:
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


# --------------------------------------------------------------------------- training windows, shadow scores
def save_window_manifest(con: Connection, partition_day: date, manifest: dict) -> None:
    """Store (replace) the window manifest of one ``training_window`` partition.

    ``manifest`` is :func:`factory_assets.feature_store.store.window_manifest`'s dict (``start``, ``end``,
    ``complete``, ``window_version``, ...); it is stored whole as JSON, its keys also as columns.
    """
    t = training_windows_table
    with _atomic(con):
        con.execute(sa.delete(t).where(t.c.partition_day == _day(partition_day)))
        con.execute(sa.insert(t).values(
            partition_day=_day(partition_day), window_start=_day(manifest["start"]), window_end=_day(manifest["end"]),
            complete=bool(manifest["complete"]), window_version=str(manifest["window_version"]),
            manifest=json.dumps(manifest), saved_at=_now(),
        ))


def load_window_manifest(con: Connection, partition_day: date) -> dict | None:
    """The stored window manifest of a ``training_window`` partition (as saved), or None."""
    t = training_windows_table
    row = con.execute(sa.select(t.c.manifest).where(t.c.partition_day == _day(partition_day))).fetchone()
    return None if row is None else json.loads(row[0])


def _score_value(name: str, value):
    """A score row's value as a plain Python scalar for binding (NaN and missing -> None, numpy -> int/float)."""
    if value is None or (not isinstance(value, (str, date)) and pd.isna(value)):
        return None
    if name == "day":
        return _day(value)
    if name in _SCORE_INTS:
        return int(value)
    if name in _SCORE_FLOATS:
        return float(value)
    return value


def replace_shadow_scores(con: Connection, day: date, rows: list[dict]) -> None:
    """Replace the :data:`SHADOW_SCORES` rows of ``day`` with ``rows`` (dicts with the :data:`SCORE_COLUMNS`;
    ``scored_at`` a UTC datetime), in one transaction."""
    t = shadow_scores_table
    values = [{name: _score_value(name, row.get(name)) for name in SCORE_COLUMNS} for row in rows]
    with _atomic(con):
        con.execute(sa.delete(t).where(t.c.day == _day(day)))
        if values:
            con.execute(sa.insert(t), values)


def shadow_scores(con: Connection, until: date | None = None) -> pd.DataFrame:
    """The :data:`SHADOW_SCORES` rows (up to and including ``until`` when given), oldest first (then by champion
    and shadow version, missing versions last).

    Columns: :data:`SCORE_COLUMNS`; ``day`` as ``date``, the counts and versions numeric (a version column with a
    missing version is float64 with NaN), the scores float64 (NaN where not scored), ``scored_at`` UTC datetimes.
    """
    t = shadow_scores_table.c
    query = sa.select(*(t[c] for c in SCORE_COLUMNS))
    if until is not None:
        query = query.where(t.day <= _day(until))
    query = query.order_by(t.day, t.champion_version.is_(None), t.champion_version, t.shadow_version.is_(None),
                           t.shadow_version, t.score_id)
    frame = _frame(con.execute(query))
    frame["day"] = [_day(d) for d in frame["day"]]
    for name in (*_SCORE_INTS, *_SCORE_FLOATS):
        frame[name] = pd.to_numeric(frame[name]).astype("float64") if name in _SCORE_FLOATS else pd.to_numeric(frame[name])
    return frame
