"""The live path's refresh: today's intraday features folded into the champion, written for the service.

:func:`refresh_live_state` reads, for the model the champion alias names:

* the intraday path's latest state (``contract.read_intraday``: ``intraday_status`` and ``intraday_user_item``,
  written by the DataOps location's ``intraday_features`` every ~15 minutes);
* the ``user_item_daily`` rows of today's users inside the champion's training window (the manifest's
  ``window`` start/end, else ``artefacts.served.trained_on``), only days before today: what a refit today would
  see of them besides today;
* yesterday's summed ``weight`` per item (the category trend's reference) and the item catalogue
  (``item_categories``);

builds a :class:`~factory_assets.ml.recsys.live.LiveState` (``recsys.live.build_live_state``: fold-in, today's
weights and conversions, the trend) and writes it atomically to ``HomeLayout.live_state``
(``<home>/<source>/live/state.npz``).  The service reloads that file when it changes and uses it only while its
``model_version`` / ``model_sha256`` name the champion it serves.

Nothing is written (``None``, the reason logged) when there is no champion, when the intraday path never ran,
or when the intraday day is already inside the champion's training window (the nightly model has those events).
A champion whose files fail verification raises (``ArtefactIntegrityError``): a live state is never built on an
unverified model.  Read-only on the feature store; SQL values are parameters.  No Dagster here.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from factory_assets.feature_store.contract import USER_ITEM_DAILY, read_intraday, read_item_categories
from factory_assets.ml import registry
from factory_assets.ml.recsys.artefact import load_manifest_model, read_manifest
from factory_assets.ml.recsys.live import build_live_state, save_state
from factory_assets.platform.settings import HomeLayout

logger = logging.getLogger(__name__)


class Log(Protocol):
    """What is logged to: a ``logging.Logger`` or Dagster's ``context.log``."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


def training_window(manifest: dict) -> tuple[date, date]:
    """The served model's training days ``(start, end)`` (inclusive, UTC): the manifest's ``window`` when it has
    one, else ``artefacts.served.trained_on``.

    Raises:
        KeyError: the manifest names neither.
    """
    window = manifest.get("window") or {}
    if window.get("start") and window.get("end"):
        start, end = window["start"], window["end"]
    else:
        start, end = manifest["artefacts"]["served"]["trained_on"]
    return date.fromisoformat(str(start)), date.fromisoformat(str(end))


def window_rows(con: duckdb.DuckDBPyConnection, user_ids: np.ndarray, start: date, end: date) -> pd.DataFrame:
    """``user_item_daily`` rows of ``user_ids`` for the inclusive days ``start..end``: ``day`` (``datetime.date``),
    ``user_id``, ``item_id`` (str), ``weight`` (float64), ordered by day, user, item.  Empty when ``end < start``
    or there are no users."""
    columns = ["day", "user_id", "item_id", "weight"]
    if end < start or len(user_ids) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c != "weight" else np.float64) for c in columns})
    frame = con.execute(
        f"SELECT day, user_id, item_id, CAST(weight AS DOUBLE) AS weight FROM {USER_ITEM_DAILY} "
        "WHERE day BETWEEN ? AND ? AND user_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) "
        "ORDER BY day, user_id, item_id",
        [start, end, [str(u) for u in user_ids]],
    ).df()
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    frame["user_id"] = frame["user_id"].astype(str)
    frame["item_id"] = frame["item_id"].astype(str)
    return frame[columns]


def item_weights(con: duckdb.DuckDBPyConnection, day: date) -> pd.Series:
    """item id (str) -> summed ``user_item_daily.weight`` (float64) of ``day``; empty when the day has no rows."""
    frame = con.execute(
        f"SELECT item_id, sum(weight) AS weight FROM {USER_ITEM_DAILY} WHERE day = ? GROUP BY item_id ORDER BY item_id",
        [day],
    ).df()
    return pd.Series(frame["weight"].to_numpy(dtype=np.float64), index=frame["item_id"].astype(str).to_numpy(),
                     dtype=np.float64)


def state_for(con: duckdb.DuckDBPyConnection, model, version: int, manifest_sha256: str, window: tuple[date, date],
              status: dict, today_rows: pd.DataFrame):
    """The ``LiveState`` of one champion (``model``, registry ``version``, manifest sha256, training ``window``) for
    the intraday ``status`` / ``today_rows`` (``contract.read_intraday``): its users' window rows before today,
    yesterday's item weights and the categories, read here.  Shared by :func:`refresh_live_state` (the champion of
    now) and ``factory demo``'s ``factory_live`` (the champion of each past day)."""
    day = status["day"]
    users = np.sort(today_rows["user_id"].astype(str).unique())
    start, end = window
    return build_live_state(
        model, version, manifest_sha256, status, today_rows,
        window_rows(con, users, start, min(end, day - timedelta(days=1))),
        item_weights(con, day - timedelta(days=1)), read_item_categories(con),
    )


def refresh_live_state(con: duckdb.DuckDBPyConnection, layout: HomeLayout, log: Log | None = None) -> dict | None:
    """Build today's live state of the champion and write it to ``layout.live_state`` (module docstring).

    Args:
        con: a (read-only) feature-store connection (``FeatureStoreResource.connect()``).
        layout: the home's layout: the champion alias under ``layout.aliases``, the state file ``layout.live_state``.
        log: where the reason goes when nothing is written (default: this module's logger).

    Returns:
        ``LiveState.describe()`` plus ``path`` (str), ``sha256`` (of the file), ``model_sha256`` (the champion's
        manifest) and ``window`` (``[start, end]`` ISO days of the fold-in's window rows); None when nothing was
        written (no champion, no intraday state, or an intraday day the champion was trained on).

    Raises:
        ArtefactIntegrityError, FileNotFoundError: the champion's manifest or artefact fails verification.
        json.JSONDecodeError: an unparsable champion alias.
    """
    log = log or logger
    pointer = registry.read_alias(layout.aliases)
    if pointer is None:
        log.info(f"no champion alias under {layout.aliases}: no live state to build")
        return None
    version, manifest_path, manifest_sha = int(pointer["version"]), pointer["path"], pointer["sha256"]
    manifest = read_manifest(manifest_path, manifest_sha)
    model = load_manifest_model(manifest_path, "served", manifest_sha)  # verified: manifest and artefact sha256
    intraday = read_intraday(con)
    if intraday is None:
        log.info("the intraday path has not run (no intraday_status): no live state to build")
        return None
    status, today_rows = intraday
    day = status["day"]
    start, end = training_window(manifest)
    if day <= end:
        log.info(f"the intraday day {day} is inside champion v{version}'s training window {start}..{end}: "
                 "the nightly model already holds those events, no live state")
        return None
    state = state_for(con, model, version, manifest_sha, (start, end), status, today_rows)
    path = layout.live_state
    digest = save_state(state, path)
    return {**state.describe(), "path": str(path), "sha256": digest, "model_sha256": manifest_sha,
            "window": [start.isoformat(), min(end, day - timedelta(days=1)).isoformat()]}
