"""Which model versions were trained on data that a right-to-erasure request has since changed.

The DataOps half erases (``erase_user``) and records the request in the feature store's ``erasure_log``; it
never touches the registry.  This module is the MLOps half's side: a version whose manifest names an input
partition whose data version changed since training (:func:`factory_assets.feature_store.contract.stale_inputs`)
on a day an erasure changed (:func:`~factory_assets.feature_store.contract.erased_days`) gets one
``trained_on_erased_data`` event in its history: it must not keep serving, the champion gate waives the
comparison with it, and rollback never restores it.
"""

from __future__ import annotations

import logging
from datetime import date

import duckdb
from sqlalchemy.engine import Connection

from factory_assets.feature_store import contract
from factory_assets.ml import registry
from factory_assets.ml.recsys.artefact import read_manifest

log = logging.getLogger(__name__)


def mark_trained_on_erased_data(reg: Connection, con: duckdb.DuckDBPyConnection) -> list[int]:
    """Record ``trained_on_erased_data`` for every version trained on erased data not yet marked; return them
    (ascending).  Idempotent: a marked version is never marked twice.

    Args:
        reg: a registry connection (:func:`factory_assets.ml.registry.connect`).
        con: a feature store connection (the warehouse's ledger and erasure log).
    """
    erased = contract.erased_days(con)
    if not erased:
        return []
    marked = []
    for version in sorted(int(v) for v in registry.versions(reg)["version"]):
        if registry.has_event(reg, version, registry.ERASED_DATA):
            continue
        row = registry.version_row(reg, version)
        try:
            manifest = read_manifest(row["manifest_path"])
        except FileNotFoundError:
            log.warning("v%s: manifest %s is gone; not checked for erased inputs", version, row["manifest_path"])
            continue
        changed = {date.fromisoformat(s["partition"]) for s in contract.stale_inputs(con, manifest)}
        if changed & erased:
            days = ", ".join(d.isoformat() for d in sorted(changed & erased))
            registry.record_event(reg, version, registry.ERASED_DATA, f"inputs changed by an erasure ({days})")
            marked.append(version)
    return marked
