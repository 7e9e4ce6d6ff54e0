"""``factory models``: read the model registry and roll the champion back from a shell.

    factory models list                                        [common options]
    factory models show VERSION                                [common options]
    factory models diff A B                                    [common options]
    factory models rollback [--to VERSION] --reason TEXT [--actor NAME]  [common options]

Common options: ``--json`` (standard output is exactly one JSON document, logs go to standard error),
``--home`` (default ``FACTORY_HOME``), ``--source`` (default ``FACTORY_SOURCE``), ``--timeout SECONDS``
(how long ``show`` waits for the warehouse lock to read the lineage, default 10).

``list``     every version: ``version``, ``partition``, ``status``, ``ndcg_at_10``, ``created_at``, ``reason``
             and whether the ``champion`` / ``shadow`` alias names it.
``show``     one version: its registry row, the aliases naming it, the integrity of its manifest and
             artefacts, the manifest, metrics, gate results, its history (``model_events``) and its lineage:
             the feature partitions of its window with the data versions it was trained on and whether each is
             still current (:func:`factory_assets.feature_store.contract.stale_inputs`), and the raw event
             partitions beneath them.
``diff``     metrics of A and B side by side with ``delta = B - A``, the parameters that differ and the input
             partitions whose data versions differ (or that only one of them read).
``rollback`` restores the previous eligible champion (or ``--to VERSION``): a run of the ``rollback_champion``
             job (``served_model`` with ``action=rollback``) executed in this process against the home's
             Dagster instance, so the catalog's latest ``served_model`` materialization names the restored
             version; recorded as ``rolled_back`` with the actor (default ``$USER``, else ``cli``) and the
             reason.

The registry is its own store (:mod:`factory_assets.ml.registry`: ``<home>/<source>/registry.db`` or
``FACTORY_REGISTRY_URL``), never the warehouse: ``list``, ``diff`` and ``rollback`` never wait for the
warehouse's DuckDB lock.  Only ``show``'s lineage reads the feature store's ledger, on a short read-only
DuckDB connection retried for ``--timeout`` seconds; when the warehouse stays locked (or is missing) ``show``
still answers, with ``lineage`` None and ``lineage_error`` saying why.  Which version is champion or shadow
is read from the alias files, without a connection.

Exit status: 0 done; 1 refused or not found (unknown version, rejected rollback target, ...); 3 the warehouse
stayed locked (no longer returned by these commands; kept for callers of :func:`open_warehouse`).  With
``--json`` a failure is also one JSON document: ``{"error": {"kind", "message"}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import duckdb
import sqlalchemy as sa

from factory_assets.platform import settings
from factory_assets.ml import registry
from factory_assets.platform.settings import HomeLayout

log = logging.getLogger("factory.models")

DEFAULT_LOCK_TIMEOUT_S = 10.0
EXIT_OK, EXIT_REFUSED, EXIT_LOCKED = 0, 1, 3
MODEL_METRICS = ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "coverage", "n_users", "als_weight")


class CommandError(Exception):
    """A refusal with a message for the user, a machine-readable ``kind`` and an exit status."""

    def __init__(self, message: str, kind: str = "refused", exit_status: int = EXIT_REFUSED):
        super().__init__(message)
        self.kind = kind
        self.exit_status = exit_status


class WarehouseLocked(CommandError):
    """Another process held the warehouse file for longer than the timeout."""

    def __init__(self, message: str):
        super().__init__(message, kind="warehouse_locked", exit_status=EXIT_LOCKED)


# --------------------------------------------------------------------------- connections
def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("could not set" in text or "conflicting" in text)


@contextmanager
def _feature_store(layout: HomeLayout, timeout_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the home's feature store: the DuckDB file (:func:`open_warehouse`), or the
    Parquet lake (never locked)."""
    if layout.held_storage() == "parquet":
        from factory_assets.feature_store import storage

        with storage.connect_lake(layout.lake) as con:
            yield con
        return
    with open_warehouse(layout.warehouse, timeout_s=timeout_s) as con:
        yield con


@contextmanager
def open_warehouse(
    path: Path, read_only: bool = True, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    first_delay_s: float = 0.05, max_delay_s: float = 1.0,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short DuckDB connection to ``path`` (session time zone UTC), closed on exit.

    While another process holds the file's lock, opening is retried with exponential back-off (``first_delay_s``
    doubling up to ``max_delay_s``) until ``timeout_s`` seconds have passed.

    Raises:
        CommandError(kind="not_found"): there is no warehouse file at ``path``.
        WarehouseLocked: still locked after ``timeout_s``; the message names the file and DuckDB's description
            of the lock holder (process and PID).
    """
    path = Path(path)
    if not path.exists():
        raise CommandError(f"no warehouse at {path} (wrong --home/--source, or nothing ingested yet)", kind="not_found")
    deadline = time.monotonic() + max(0.0, timeout_s)
    delay = first_delay_s
    waited = False
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WarehouseLocked(
                    f"the warehouse {path} is locked by another process and stayed locked for {timeout_s:g} s "
                    f"({'read-only' if read_only else 'read-write'} open refused). DuckDB says: {exc}. "
                    "A Dagster run (pool 'warehouse') or another writer holds it; try again when it finishes, "
                    "or wait longer with --timeout."
                ) from exc
            if not waited:
                log.warning("warehouse %s is locked by another process; retrying for up to %g s", path, timeout_s)
                waited = True
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, max_delay_s)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def registry_url(layout: HomeLayout) -> str:
    """The registry of ``layout``: ``FACTORY_REGISTRY_URL`` or ``sqlite:///<home>/<source>/registry.db``."""
    return settings.registry_url() or registry.default_url(layout.root)


@contextmanager
def open_registry(layout: HomeLayout) -> Iterator[sa.engine.Connection | None]:
    """A registry connection, or None when the default SQLite registry file does not exist yet (nothing was
    registered; nothing is created then).

    Raises:
        CommandError(kind="not_found"): the home's source folder does not exist (wrong --home/--source);
        CommandError(kind="registry_unavailable"): the store cannot be reached.
    """
    url = registry_url(layout)
    if not settings.registry_url():
        if not layout.root.exists():
            raise CommandError(f"no factory home at {layout.root} (wrong --home/--source, or nothing ingested yet)",
                               kind="not_found")
        if not (layout.root / registry.REGISTRY_FILE).exists():
            yield None
            return
    try:
        with registry.connect(url) as con:
            yield con
    except sa.exc.OperationalError as exc:
        raise CommandError(f"the model registry {sa.engine.make_url(url).render_as_string(hide_password=True)} "
                           f"cannot be used: {exc.orig}", kind="registry_unavailable") from exc


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


# --------------------------------------------------------------------------- aliases (files, no connection)
def _aliases(layout: HomeLayout) -> dict:
    """``{"champion": pointer | None, "shadow": pointer | None, "errors": {alias: message}}``."""
    out: dict = {"errors": {}}
    for alias in (registry.CHAMPION, registry.SHADOW):
        try:
            out[alias] = registry.read_alias(layout.aliases, alias)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            out[alias] = None
            out["errors"][alias] = f"{registry.alias_path(layout.aliases, alias)} does not parse: {exc}"
    return out


def _alias_version(pointer: dict | None) -> int | None:
    return int(pointer["version"]) if isinstance(pointer, dict) and isinstance(pointer.get("version"), int) else None


# --------------------------------------------------------------------------- commands
def _version_dict(row: dict) -> dict:
    metrics = json.loads(row["metrics"]) if isinstance(row["metrics"], str) else row["metrics"]
    return {**row, "metrics": metrics, "partition": _iso(row["partition_day"])}


def _model_metrics(metrics: dict) -> dict:
    return (metrics or {}).get("evaluation", {}).get("model", {})


def list_versions(layout: HomeLayout, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> dict:
    """Every registered version, oldest first.

    Returns:
        ``{"source", "warehouse" (the DataOps warehouse file, as before), "registry" (the registry's URL, password
        hidden), "champion": int | None, "shadow": int | None, "alias_errors",
        "versions": [{"version", "partition", "status", "ndcg_at_10", "created_at", "updated_at", "reason",
        "manifest_sha256", "champion": bool, "shadow": bool}]}`` (``ndcg_at_10`` on the held-out days, None
        if unknown; times ISO 8601 UTC).
    Raises:
        CommandError / WarehouseLocked: see :func:`open_warehouse`.
    """
    aliases = _aliases(layout)
    champion, shadow = _alias_version(aliases[registry.CHAMPION]), _alias_version(aliases[registry.SHADOW])
    with open_registry(layout) as con:
        rows = [] if con is None else [
            dict(r) for r in con.execute(sa.select(registry.versions_table).order_by(registry.versions_table.c.version)).mappings()
        ]
    versions = []
    for row in map(_version_dict, rows):
        versions.append({
            "version": int(row["version"]),
            "partition": row["partition"],
            "status": row["status"],
            "ndcg_at_10": _model_metrics(row["metrics"]).get("ndcg_at_10"),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "reason": row["reason"],
            "manifest_sha256": row["manifest_sha256"],
            "champion": int(row["version"]) == champion,
            "shadow": int(row["version"]) == shadow,
        })
    return {
        "source": layout.source, "warehouse": str(layout.warehouse),  # kept for scripts; the registry is not in it
        "registry": sa.engine.make_url(registry_url(layout)).render_as_string(hide_password=True),
        "champion": champion, "shadow": shadow,
        "alias_errors": aliases["errors"], "versions": versions,
    }


def _get_row(con: sa.engine.Connection | None, version: int) -> dict:
    if con is None:
        raise CommandError(f"model version {version} is not in the registry (no model was registered yet)", kind="not_found")
    t = registry.versions_table
    row = con.execute(sa.select(t).where(t.c.version == version)).mappings().fetchone()
    if row is None:
        known = [int(r[0]) for r in con.execute(sa.select(t.c.version).order_by(t.c.version)).fetchall()]
        raise CommandError(f"model version {version} is not in the registry (known: {known})", kind="not_found")
    return _version_dict(dict(row))


def _read_manifest(row: dict) -> tuple[dict | None, dict]:
    """The manifest (parsed even when tampered, for inspection) and an integrity report of it and its artefacts."""
    from factory_assets.ml.recsys.artefact import sha256_file

    path = Path(row["manifest_path"])
    integrity: dict = {"manifest": {"path": str(path), "expected_sha256": row["manifest_sha256"]}, "artefacts": {}}
    if not path.exists():
        integrity["manifest"].update(ok=False, problem="missing")
        integrity["ok"] = False
        return None, integrity
    actual = sha256_file(path)
    integrity["manifest"].update(ok=actual == row["manifest_sha256"], actual_sha256=actual)
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        integrity["manifest"].update(ok=False, problem=f"does not parse: {exc}")
        integrity["ok"] = False
        return None, integrity
    for role, entry in (manifest.get("artefacts") or {}).items():
        file = path.parent / entry["file"]
        report = {"file": str(file), "expected_sha256": entry["sha256"]}
        if file.exists():
            report["actual_sha256"] = sha256_file(file)
            report["ok"] = report["actual_sha256"] == entry["sha256"]
        else:
            report.update(ok=False, problem="missing")
        integrity["artefacts"][role] = report
    integrity["ok"] = integrity["manifest"]["ok"] and all(a["ok"] for a in integrity["artefacts"].values())
    return manifest, integrity


def _lineage(con: duckdb.DuckDBPyConnection, manifest: dict) -> dict:
    """Feature and raw event partitions behind a manifest, with trained-on and current data versions."""
    from factory_assets.feature_store import contract
    from factory_assets.feature_store import store
    from factory_assets.feature_store.contract import LEDGER, RAW_EVENTS

    window = manifest.get("window", {})
    inputs = contract.manifest_inputs(manifest)  # the window's and the purchase history's partitions
    stale = contract.stale_inputs(con, manifest) if inputs else []
    stale_keys = {(s["asset"], s["partition"]): s["now"] for s in stale}
    ledger = {
        (r["asset"], _iso(r["partition_day"])): r
        for r in _rows(con, f"SELECT asset, partition_day, data_version, row_count FROM {LEDGER}")
    }
    features = []
    for entry in sorted(inputs, key=lambda i: (i["asset"], i["partition"])):
        key = (entry["asset"], entry["partition"])
        now = stale_keys[key] if key in stale_keys else entry["data_version"]
        features.append({
            "asset": entry["asset"], "partition": entry["partition"], "data_version": entry["data_version"],
            "row_count": entry.get("row_count"), "current_data_version": now, "current": key not in stale_keys,
        })
    trained = {(f["asset"], f["partition"]): f["data_version"] for f in features}
    events = []
    for day in sorted({f["partition"] for f in features}):
        raw = ledger.get((RAW_EVENTS, day))
        views = [a for (a, d) in trained if d == day]
        matches = raw is not None and all(
            store.feature_data_version(view, str(raw["data_version"])) == trained[(view, day)] for view in views
        )
        events.append({
            "asset": RAW_EVENTS, "partition": day,
            "data_version": None if raw is None else raw["data_version"],
            "row_count": None if raw is None else int(raw["row_count"]),
            "matches_training": bool(matches),
        })
    return {
        "window": {k: window.get(k) for k in ("start", "end", "days", "window_version")},
        "purchase_history": None if not manifest.get("history") else
        {k: manifest["history"].get(k) for k in ("start", "end", "days", "missing")},
        "feature_versions": manifest.get("feature_versions", {}),
        "feature_partitions": features,
        "event_partitions": events,
        "stale": stale,
        "current": not stale,
    }


def show_version(layout: HomeLayout, version: int, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> dict:
    """Everything known about one version (see the module docstring for the fields).

    Returns:
        ``{"version", "partition", "status", "reason", "created_at", "updated_at", "manifest_path",
        "manifest_sha256", "aliases": [names], "integrity": {"ok", "manifest", "artefacts": {role: ...}},
        "manifest", "metrics" (the evaluation: model, baselines, references), "champion_comparison",
        "gates": [{"name", "passed", "reason", ...}], "verdict", "history": [{"changed_at", "action",
        "from_status", "to_status", "reason"}], "lineage": {"window", "feature_versions",
        "feature_partitions": [{"asset", "partition", "data_version", "row_count", "current_data_version",
        "current"}], "event_partitions": [{"asset", "partition", "data_version", "row_count",
        "matches_training"}], "stale", "current"}, "lineage_error": str | None}``.  ``lineage`` is None when
        the manifest is unreadable, or the warehouse is missing or stayed locked for ``timeout_s`` seconds
        (``lineage_error`` says which; the rest is answered from the registry and the files).
    Raises:
        CommandError(kind="not_found"): unknown version.
    """
    aliases = _aliases(layout)
    with open_registry(layout) as con:
        row = _get_row(con, version)
        t = registry.events_table.c
        history = [dict(r) for r in con.execute(
            sa.select(t.changed_at, t.action, t.from_status, t.to_status, t.reason)
            .where(t.version == version).order_by(t.changed_at, t.event_id)
        ).mappings()]
    manifest, integrity = _read_manifest(row)
    lineage, lineage_error = None, None
    if manifest is not None:
        try:
            with _feature_store(layout, timeout_s) as wh:
                lineage = _lineage(wh, manifest)
        except CommandError as exc:  # missing or locked warehouse: the lineage only
            lineage_error = str(exc)
            log.warning("lineage of v%s not read: %s", version, exc)
    metrics = row["metrics"] or {}
    return {
        "version": int(row["version"]),
        "partition": row["partition"],
        "status": row["status"],
        "reason": row["reason"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "manifest_path": row["manifest_path"],
        "manifest_sha256": row["manifest_sha256"],
        "aliases": [a for a in (registry.CHAMPION, registry.SHADOW) if _alias_version(aliases[a]) == version],
        "integrity": integrity,
        "manifest": manifest,
        "metrics": metrics.get("evaluation"),
        "champion_comparison": metrics.get("champion"),
        "gates": metrics.get("gates", []),
        "verdict": metrics.get("verdict"),
        "history": history,
        "lineage": lineage,
        "lineage_error": lineage_error,
    }


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def diff_versions(layout: HomeLayout, a: int, b: int, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> dict:
    """Compare two versions.

    Returns:
        ``{"a": {"version", "partition", "status"}, "b": {...},
        "metrics": {name: {"a", "b", "delta"}}`` (the held-out evaluation of each, ``delta = b - a``, None when
        either is missing), ``"baselines": {baseline: {"a", "b", "delta"}}`` (NDCG@10 of each baseline on
        each version's evaluation users), ``"params": {name: {"a", "b"}}`` (only those that differ),
        ``"window": {"a": {start, end, window_version}, "b": {...}}``,
        ``"inputs": {"differ": [{"asset", "partition", "a", "b"}], "same": int}`` (data versions; None where a
        version did not read that partition)}``.
    Raises:
        CommandError(kind="not_found"): an unknown version.
    """
    with open_registry(layout) as con:
        rows = {"a": _get_row(con, a), "b": _get_row(con, b)}
    manifests = {k: _read_manifest(r)[0] or {} for k, r in rows.items()}
    model = {k: _model_metrics(r["metrics"]) for k, r in rows.items()}
    names = [m for m in MODEL_METRICS if m in model["a"] or m in model["b"]]
    names += sorted((set(model["a"]) | set(model["b"])) - set(names) - {"train_days", "test_days"})
    metrics = {}
    for name in names:
        va, vb = model["a"].get(name), model["b"].get(name)
        metrics[name] = {"a": va, "b": vb, "delta": vb - va if _number(va) and _number(vb) else None}
    baselines = {}
    bases = {k: (r["metrics"] or {}).get("evaluation", {}).get("baselines", {}) for k, r in rows.items()}
    for name in sorted(set(bases["a"]) | set(bases["b"])):
        va, vb = bases["a"].get(name, {}).get("ndcg_at_10"), bases["b"].get(name, {}).get("ndcg_at_10")
        baselines[name] = {"a": va, "b": vb, "delta": vb - va if _number(va) and _number(vb) else None}
    from dataclasses import asdict

    from factory_assets.feature_store import contract
    from factory_assets.ml.recsys.model import ModelParams

    defaults = asdict(ModelParams())  # a manifest leaves out parameters added later at their default (history_days 0)
    pa, pb = ({**defaults, **manifests[k].get("params", {})} for k in ("a", "b"))
    params = {n: {"a": pa.get(n), "b": pb.get(n)} for n in sorted(set(pa) | set(pb)) if pa.get(n) != pb.get(n)}
    ins = {
        k: {(i["asset"], i["partition"]): i["data_version"] for i in contract.manifest_inputs(m)}
        for k, m in manifests.items()
    }
    differ, same = [], 0
    for key in sorted(set(ins["a"]) | set(ins["b"])):
        va, vb = ins["a"].get(key), ins["b"].get(key)
        if va == vb:
            same += 1
        else:
            differ.append({"asset": key[0], "partition": key[1], "a": va, "b": vb})
    return {
        "a": {k: rows["a"][k] for k in ("version", "partition", "status")},
        "b": {k: rows["b"][k] for k in ("version", "partition", "status")},
        "metrics": metrics,
        "baselines": baselines,
        "params": params,
        "window": {
            k: {f: m.get("window", {}).get(f) for f in ("start", "end", "window_version")} for k, m in manifests.items()
        },
        "code_version": {k: m.get("code_version") for k, m in manifests.items()},
        "inputs": {"differ": differ, "same": same},
    }


def rollback_champion(
    layout: HomeLayout, reason: str, actor: str, to_version: int | None = None, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> dict:
    """Restore the previous eligible champion (or ``to_version``) through a Dagster run.

    Picks and checks the target on the registry (the champion stack's previous entry by default, so repeated
    rollbacks walk back: :func:`registry.champion_stack`; its manifest and served artefact must verify), then
    executes the ``rollback_champion`` job (``served_model`` with ``action=rollback``, partition = the
    target's ``partition_day``) in this process against the home's Dagster instance
    (:func:`factory_assets.platform.settings.dagster_home`), so the instance's latest ``served_model``
    materialization names the restored version.  Never touches the warehouse.  ``timeout_s`` is unused (the
    registry's own busy timeout applies); kept for callers.

    Returns:
        ``{"rolled_back": True, "from_version", "to_version", "actor", "reason", "champion": pointer,
        "run_id": str}``.
    Raises:
        CommandError: an empty reason, no champion, no eligible earlier champion, an unknown, rejected or
            erased-data target, the target already serving, a target whose files fail verification, or a
            failed run (nothing changes then).
    """
    from factory_assets.ml.defs.served import rollback_target
    from factory_assets.ml.recsys.artefact import ArtefactIntegrityError, load_manifest_model

    if not reason.strip():
        raise CommandError("--reason must not be empty: it is recorded in the history")
    with open_registry(layout) as con:
        if con is None or registry.versions(con).empty:
            raise CommandError("there is no champion to roll back from (no model was registered yet)")
        try:
            current, target = rollback_target(con, layout.aliases, to_version)
            row = registry.version_row(con, target)
        except (LookupError, ValueError) as exc:
            raise CommandError(f"rollback refused: {exc}") from exc
    try:
        load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
    except (ArtefactIntegrityError, FileNotFoundError) as exc:
        raise CommandError(f"rollback refused: version {to_version} failed verification: {exc}") from exc
    result = run_served_model(layout, "rollback", target, row["partition_day"], reason, actor)
    pointer = registry.read_alias(layout.aliases)
    log.info("rolled back from v%s to v%s by %s (run %s)", pointer["previous_version"], pointer["version"], actor,
             result.run_id)
    return {
        "rolled_back": True, "from_version": pointer["previous_version"], "to_version": pointer["version"],
        "actor": actor, "reason": reason, "champion": pointer, "run_id": result.run_id,
    }


def run_served_model(layout: HomeLayout, action: str, version: int, partition: str, reason: str, actor: str):
    """Execute one ``served_model`` run in this process against the home's Dagster instance.

    ``action`` ``rollback`` runs the ``rollback_champion`` job, others an ad-hoc asset job over ``served_model``;
    the resources are scoped to ``layout`` (and ``FACTORY_REGISTRY_URL``).

    Returns:
        the ``ExecuteInProcessResult`` of a successful run.
    Raises:
        CommandError: the run failed (the message is the step's failure description, e.g. "rollback refused:
            ...").
    """
    from dagster import DagsterInstance, Definitions, define_asset_job

    from factory_assets.ml.defs.jobs import ROLLBACK_JOB, rollback_champion as rollback_job
    from factory_assets.ml.defs.served import served_model, served_model_run_config
    from factory_assets.ml.resources import ArtefactStore, RegistryResource

    home, source = str(layout.home), layout.source
    job_name = ROLLBACK_JOB if action == "rollback" else f"served_model_{action}"
    job = rollback_job if action == "rollback" else define_asset_job(job_name, selection=[served_model])
    defs = Definitions(
        assets=[served_model], jobs=[job],
        resources={"registry": RegistryResource(home=home, source=source, url=registry_url(layout)),
                   "artefacts": ArtefactStore(home=home, source=source)},
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a fresh instance's schema stamps print ~20 INFO lines
    previous = os.environ.get("DAGSTER_HOME")
    settings.dagster_home(layout.home)  # creates <home>/dagster (or uses $DAGSTER_HOME) and points Dagster at it
    try:
        with DagsterInstance.get() as instance:
            result = defs.resolve_job_def(job_name).execute_in_process(
                # Dagster's console logger prints every event at DEBUG: INFO and above, as factory run does
                run_config={**served_model_run_config(action, version, reason, actor),
                            "loggers": {"console": {"config": {"log_level": "INFO"}}}},
                instance=instance, partition_key=partition, raise_on_error=False,
                tags={"factory/action": action, "factory/actor": actor},
            )
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        message = "; ".join(
            (getattr(e.event_specific_data.error, "message", "") or "").strip().splitlines()[0] for e in failures
        ) or f"the {job_name} run {result.run_id} failed"
        for prefix in ("dagster._core.definitions.events.Failure: ", "Failure: "):
            message = message.replace(prefix, "")
        raise CommandError(message)
    return result


# --------------------------------------------------------------------------- output
def _iso(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def _jsonable(value):
    """Recursively: datetimes/dates to ISO strings, numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_list(doc: dict, out) -> None:
    print(f"{doc['source']}: {len(doc['versions'])} versions in {doc['registry']}; champion "
          f"{'v' + str(doc['champion']) if doc['champion'] else 'none'}, shadow "
          f"{'v' + str(doc['shadow']) if doc['shadow'] else 'none'}", file=out)
    for alias, message in doc["alias_errors"].items():
        print(f"  WARNING {alias} alias: {message}", file=out)
    print(f"{'version':>7}  {'partition':10}  {'status':9}  {'ndcg@10':>7}  {'created_at (UTC)':19}  alias", file=out)
    for v in doc["versions"]:
        alias = ",".join(a for a in ("champion", "shadow") if v[a])
        print(f"{v['version']:>7}  {v['partition']:10}  {v['status']:9}  {_fmt(v['ndcg_at_10']):>7}  "
              f"{str(v['created_at'])[:19].replace('T', ' '):19}  {alias}", file=out)


def _print_show(doc: dict, out) -> None:
    print(f"v{doc['version']} ({doc['partition']}): {doc['status']}"
          + (f" [{', '.join(doc['aliases'])}]" if doc["aliases"] else "") + f" - {doc['reason']}", file=out)
    print(f"  manifest {doc['manifest_path']} (sha256 {doc['manifest_sha256'][:12]}…): "
          f"{'verified' if doc['integrity']['ok'] else 'INTEGRITY FAILURE ' + json.dumps(doc['integrity'])}", file=out)
    if doc["metrics"]:
        model = doc["metrics"]["model"]
        print("  held-out: " + ", ".join(f"{m} {_fmt(model.get(m))}" for m in MODEL_METRICS if m in model), file=out)
        print("  baselines: " + ", ".join(f"{n} {_fmt(r.get('ndcg_at_10'))}" for n, r in doc["metrics"].get("baselines", {}).items()), file=out)
    for gate in doc["gates"]:
        print(f"  gate {gate['name']}: {'passed' if gate['passed'] else 'FAILED'} - {gate['reason']}", file=out)
    print("  history:", file=out)
    for h in doc["history"]:
        print(f"    {str(h['changed_at'])[:19]}  {h['action']:12} {h['from_status'] or '-'} -> {h['to_status']}: {h['reason']}", file=out)
    lineage = doc["lineage"]
    if doc.get("lineage_error"):
        print(f"  lineage not read: {doc['lineage_error']}", file=out)
    if lineage:
        w = lineage["window"]
        n_stale = len(lineage["stale"])
        print(f"  lineage: window {w['start']}..{w['end']} ({w['days']} days, version {str(w['window_version'])[:12]}…), "
              f"{len(lineage['feature_partitions'])} feature partitions, {len(lineage['event_partitions'])} event "
              f"partitions; {'all inputs current' if not n_stale else str(n_stale) + ' inputs changed since training'}", file=out)
        h = lineage.get("purchase_history")
        if h:
            print(f"  purchase history: {h['start']}..{h['end']} ({h['days']} days"
                  + (f", {len(h['missing'])} never ingested" if h.get("missing") else "") + ")", file=out)
        for s in lineage["stale"]:
            print(f"    stale {s['asset']} {s['partition']}: trained on {s['trained_on'][:12]}…, now {str(s['now'])[:12]}…", file=out)


def _print_diff(doc: dict, out) -> None:
    a, b = doc["a"], doc["b"]
    print(f"v{a['version']} ({a['partition']}, {a['status']})  vs  v{b['version']} ({b['partition']}, {b['status']})", file=out)
    print(f"  {'metric':22} {'A':>10} {'B':>10} {'B - A':>10}", file=out)
    for name, m in {**doc["metrics"], **{f"{k} (baseline)": v for k, v in doc["baselines"].items()}}.items():
        delta = m["delta"]
        delta = "-" if delta is None else f"{delta:+d}" if isinstance(delta, int) else f"{delta:+.4f}"
        print(f"  {name:22} {_fmt(m['a']):>10} {_fmt(m['b']):>10} {delta:>10}", file=out)
    print("  params: " + (", ".join(f"{n} {p['a']} -> {p['b']}" for n, p in doc["params"].items()) or "identical"), file=out)
    differ = doc["inputs"]["differ"]
    print(f"  inputs: {doc['inputs']['same']} identical, {len(differ)} differ", file=out)
    for d in differ[:20]:
        print(f"    {d['asset']} {d['partition']}: {str(d['a'])[:12]} -> {str(d['b'])[:12]}", file=out)
    if len(differ) > 20:
        print(f"    ... {len(differ) - 20} more (--json lists all)", file=out)


def _print_rollback(doc: dict, out) -> None:
    print(f"rolled back: champion v{doc['from_version']} -> v{doc['to_version']} by {doc['actor']}: {doc['reason']}", file=out)


# --------------------------------------------------------------------------- argparse wiring
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``models`` (with list / show / diff / rollback) to the ``factory`` sub-command parsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout; logs on stderr")
    common.add_argument("--home", help="FACTORY_HOME (default: $FACTORY_HOME or ./.factory_home)")
    common.add_argument("--source", choices=settings.SOURCE_NAMES, help="default: $FACTORY_SOURCE or simulator")
    common.add_argument("--timeout", type=float, default=DEFAULT_LOCK_TIMEOUT_S, metavar="SECONDS",
                        help="how long `show` waits for the warehouse lock to read the lineage "
                        f"(default {DEFAULT_LOCK_TIMEOUT_S:g})")
    models = subparsers.add_parser("models", help="list, show, diff model versions; roll the champion back",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = models.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", parents=[common], help="every version with status, NDCG@10 and aliases")
    show = sub.add_parser("show", parents=[common], help="manifest, metrics, gates, history and lineage of a version")
    show.add_argument("version", type=int)
    diff = sub.add_parser("diff", parents=[common], help="metrics (B - A), params and inputs of two versions")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    rb = sub.add_parser("rollback", parents=[common], help="restore the previous eligible champion (or --to VERSION)")
    rb.add_argument("--to", type=int, dest="to_version", metavar="VERSION", help="the version to restore")
    rb.add_argument("--reason", required=True, help="why (recorded in model_events and the alias)")
    rb.add_argument("--actor", default=None, help="who (default: $USER, else 'cli')")
    return models


def _layout(args: argparse.Namespace) -> HomeLayout:
    home = Path(args.home).expanduser().resolve() if args.home else settings.factory_home()
    try:
        source = args.source or settings.source_name()
        layout = HomeLayout(home, source)
        layout.check_format()  # an older layout's registry is inside its warehouse: refuse, never show it empty
    except settings.HomeFormatError as exc:
        raise CommandError(str(exc), kind="old_home", exit_status=2) from exc
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    return layout


def main(args: argparse.Namespace) -> int:
    """Run one ``factory models`` command; returns the exit status (0, 1 refused/not found, 2 a home of an older
    layout, 3 locked)."""
    printers = {"list": _print_list, "show": _print_show, "diff": _print_diff, "rollback": _print_rollback}
    try:
        layout = _layout(args)
        if args.models_command == "list":
            doc = list_versions(layout, args.timeout)
        elif args.models_command == "show":
            doc = show_version(layout, args.version, args.timeout)
        elif args.models_command == "diff":
            doc = diff_versions(layout, args.a, args.b, args.timeout)
        else:
            actor = args.actor or os.environ.get("USER") or "cli"
            doc = rollback_champion(layout, args.reason, actor, args.to_version, args.timeout)
    except CommandError as exc:
        print(f"factory models {args.models_command}: {exc}", file=sys.stderr)
        if args.json:
            _dump({"error": {"kind": exc.kind, "message": str(exc)}})
        return exc.exit_status
    try:
        if args.json:
            _dump(doc)
        else:
            printers[args.models_command](_jsonable(doc), sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `factory models show 3 | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _dump(doc: dict) -> None:
    json.dump(_jsonable(doc), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
