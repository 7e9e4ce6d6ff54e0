"""The served-recommendation log, its replay from the simulator, and the champion-vs-shadow score.

No Dagster here: this module is the contract between the recommendation service (which writes the log) and
the factory (whose ``shadow_evaluation`` asset reads it).

The log schema (long format: one row per recommended item)
----------------------------------------------------------
Every request the service answers is logged once per role it was scored for: the champion's list (what the
user saw) and, when a shadow exists, the shadow's list (computed on the same request, never shown).  Both
lists of a request share its ``request_id``, ``ts`` and ``user_id``.

=================  ==========================  ===============================================================
column             dtype (pandas / Parquet)     meaning
=================  ==========================  ===============================================================
``request_id``     ``object`` str / STRING      one id per request, shared by its champion and shadow lists
``ts``             ``datetime64[us, UTC]``      when the request was answered, UTC (tz-aware; naive refused)
``user_id``        ``object`` str / STRING      who asked (the warehouse's ``raw_events.user_id``)
``model_version``  ``int64``                    registry version that produced this list (>= 1)
``role``           ``object`` str / STRING      ``"champion"`` or ``"shadow"`` (:data:`ROLES`)
``item_id``        ``object`` str / STRING      one recommended item (distinct within a list)
``position``       ``int64``                    1-based rank in the list (1 = top), unique within a list
``score``          ``float64``                  the model's score of the item (finite)
=================  ==========================  ===============================================================

A *list* is the rows of one ``(request_id, role)``; within a request ``ts`` and ``user_id`` are the same on
every row, and within a list ``model_version`` is.  Extra columns are dropped on validation.

Files
-----
The service (or :func:`replay_from_simulator` + :func:`write_log_file`) writes Parquet files into
``<home>/<source>/served_log/`` (:func:`log_directory`), named
``served_<first UTC day>_<last UTC day>_<content sha256[:16]>.parquet``: written via a temporary file and
``os.replace`` (a reader never sees half a file), and writing the same rows twice gives the same name (the
second write is a no-op).  :func:`read_log` reads one UTC day from every file whose name range covers it
(files with other names are read in full and filtered), skips and reports unreadable or invalid files, and
drops rows duplicated across files.

Attribution rule (what counts as an outcome of a request)
---------------------------------------------------------
A request answered at ``ts`` for user ``u`` is credited with every item ``u`` *purchased* strictly after
``ts`` and strictly before the next UTC midnight after ``ts`` (the end of the request's UTC day).  Purchases
before (or at) the request cannot have been caused by it and never count; later days are left out so that a
day's score is final once that day's ``raw_events`` partition is, and does not change when later days land.
An item counts for a list when it was purchased in that window, whether or not the list showed it
(relevance is binary; purchasing an item twice counts once).

Score (see :func:`score_log`)
-----------------------------
Only requests with *both* roles logged are scored (the same requests for both models, so the comparison is
paired).  Per role: ``hit_rate_at_10`` = share of those requests whose top-10 holds at least one attributed
purchase; ``ndcg_at_10`` = mean NDCG@10 with binary relevance over the same requests, a request with no
attributed purchase scoring 0 for both models (so it is the expected ranking gain per request).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from factory_assets.ml.recsys.artefact import atomic_write_bytes
from factory_assets.ml.recsys.metrics import ranking_metrics, top_k
from factory_assets.ml.recsys.model import BlendModel

log = logging.getLogger(__name__)

SERVED_LOG_DIR = "served_log"
CHAMPION = "champion"
SHADOW = "shadow"
ROLES: tuple[str, ...] = (CHAMPION, SHADOW)
K = 10

#: column -> (pandas dtype, meaning); the order is the column order of every validated frame.
LOG_SCHEMA: dict[str, tuple[str, str]] = {
    "request_id": ("object", "one id per request, shared by its champion and shadow lists"),
    "ts": ("datetime64[us, UTC]", "when the request was answered, UTC"),
    "user_id": ("object", "who asked"),
    "model_version": ("int64", "registry version that produced the list"),
    "role": ("object", "'champion' or 'shadow'"),
    "item_id": ("object", "one recommended item"),
    "position": ("int64", "1-based rank in the list"),
    "score": ("float64", "the model's score of the item"),
}
LOG_COLUMNS: tuple[str, ...] = tuple(LOG_SCHEMA)
_FILE_NAME = re.compile(r"^served_(\d{8})_(\d{8})_([0-9a-f]{16})\.parquet$")
_STRING_COLUMNS = ("request_id", "user_id", "role", "item_id")


class LogSchemaError(ValueError):
    """Rows that do not follow the served-log schema; ``field`` names the offending column."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"served log, column {field!r}: {message}")
        self.field = field


def log_directory(source_root: Path) -> Path:
    """Where the served log of one source lives: ``<home>/<source>/served_log`` (not created).

    Args:
        source_root: ``HomeLayout.root`` (``<home>/<source>``).
    """
    return Path(source_root) / SERVED_LOG_DIR


def empty_log() -> pd.DataFrame:
    """A log frame with no rows and the schema's columns and dtypes."""
    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype=object),
            "ts": pd.Series(dtype="datetime64[us, UTC]"),
            "user_id": pd.Series(dtype=object),
            "model_version": pd.Series(dtype="int64"),
            "role": pd.Series(dtype=object),
            "item_id": pd.Series(dtype=object),
            "position": pd.Series(dtype="int64"),
            "score": pd.Series(dtype="float64"),
        }
    )


def _integer_column(frame: pd.DataFrame, name: str, minimum: int) -> pd.Series:
    col = frame[name]
    if col.isna().any():
        raise LogSchemaError(name, f"{int(col.isna().sum())} null value(s)")
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        raise LogSchemaError(name, f"must be an integer column, got dtype {col.dtype}")
    values = col.to_numpy()
    if not pd.api.types.is_integer_dtype(col):
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise LogSchemaError(name, "must hold whole numbers")
    values = values.astype(np.int64)
    if len(values) and values.min() < minimum:
        raise LogSchemaError(name, f"must be >= {minimum}, found {int(values.min())}")
    return pd.Series(values, index=frame.index, dtype="int64")


def validate_log(rows: pd.DataFrame) -> pd.DataFrame:
    """Check rows against :data:`LOG_SCHEMA` and return a normalised copy.

    The copy has exactly :data:`LOG_COLUMNS` in that order, the schema's dtypes (``ts`` converted to UTC,
    microseconds), and a fresh ``RangeIndex``; row order is kept.  Extra columns are dropped.

    Raises:
        TypeError: ``rows`` is not a DataFrame.
        LogSchemaError: (a ``ValueError``) naming the field: a missing column, nulls or empty ids, a naive or
            non-datetime ``ts``, a ``role`` outside :data:`ROLES`, a non-integer or < 1 ``position`` /
            ``model_version``, a non-finite ``score``, a duplicated position or item within a list, a request
            whose rows disagree on ``user_id`` or ``ts``, or a list with more than one ``model_version``.
    """
    if not isinstance(rows, pd.DataFrame):
        raise TypeError(f"served-log rows must be a pandas DataFrame, not {type(rows).__name__}")
    missing = [c for c in LOG_COLUMNS if c not in rows.columns]
    if missing:
        raise LogSchemaError(missing[0], f"missing (required columns: {', '.join(LOG_COLUMNS)}; missing: {', '.join(missing)})")
    frame = rows.loc[:, list(LOG_COLUMNS)].reset_index(drop=True)
    out: dict[str, pd.Series] = {}
    for name in _STRING_COLUMNS:
        col = frame[name]
        if col.isna().any():
            raise LogSchemaError(name, f"{int(col.isna().sum())} null value(s)")
        text = col.astype(str)
        if (text.str.len() == 0).any():
            raise LogSchemaError(name, "empty string(s)")
        out[name] = text.astype(object)
    bad_roles = sorted(set(out["role"]) - set(ROLES))
    if bad_roles:
        raise LogSchemaError("role", f"unknown value(s) {bad_roles}; allowed: {list(ROLES)}")
    ts = frame["ts"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        kind = "timezone-naive" if pd.api.types.is_datetime64_dtype(ts) else f"dtype {ts.dtype}"
        raise LogSchemaError("ts", f"must be a timezone-aware datetime column (UTC), got {kind}")
    if ts.isna().any():
        raise LogSchemaError("ts", f"{int(ts.isna().sum())} null value(s)")
    out["ts"] = ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    out["model_version"] = _integer_column(frame, "model_version", 1)
    out["position"] = _integer_column(frame, "position", 1)
    score = frame["score"]
    if pd.api.types.is_bool_dtype(score) or not pd.api.types.is_numeric_dtype(score):
        raise LogSchemaError("score", f"must be a float column, got dtype {score.dtype}")
    score = score.astype("float64")
    if not np.all(np.isfinite(score.to_numpy())):
        raise LogSchemaError("score", "NaN or infinite value(s)")
    out["score"] = score
    clean = pd.DataFrame({c: out[c] for c in LOG_COLUMNS})

    if clean.duplicated(["request_id", "role", "position"]).any():
        raise LogSchemaError("position", "a position appears twice in one (request_id, role) list")
    if clean.duplicated(["request_id", "role", "item_id"]).any():
        raise LogSchemaError("item_id", "an item appears twice in one (request_id, role) list")
    per_request = clean.groupby("request_id", sort=False).agg(users=("user_id", "nunique"), times=("ts", "nunique"))
    if (per_request["users"] > 1).any():
        raise LogSchemaError("user_id", f"request {per_request.index[per_request['users'] > 1][0]!r} has more than one user_id")
    if (per_request["times"] > 1).any():
        raise LogSchemaError("ts", f"request {per_request.index[per_request['times'] > 1][0]!r} has more than one ts")
    versions = clean.groupby(["request_id", "role"], sort=False)["model_version"].nunique()
    if (versions > 1).any():
        raise LogSchemaError("model_version", f"list {versions.index[versions > 1][0]!r} has more than one model_version")
    return clean


def _content_digest(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256("|".join(f"{c}:{frame[c].dtype}" for c in frame.columns).encode())
    if len(frame):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _utc_day(ts: pd.Timestamp) -> date:
    return ts.tz_convert("UTC").date()


def write_log_file(rows: pd.DataFrame, directory: Path) -> Path:
    """Validate ``rows`` and write them as one Parquet file in ``directory``; return its path.

    Rows are sorted by ``(ts, request_id, role, position)`` first, so the same set of rows in any order gives
    the same file name ``served_<YYYYMMDD>_<YYYYMMDD>_<sha256[:16]>.parquet`` (first and last UTC day of
    ``ts``, hash of the normalised content).  When that file already exists nothing is written (idempotent
    re-write); otherwise the bytes go to a temporary file in ``directory``, are fsynced and moved into place
    with ``os.replace``, so readers see the whole file or none.  The directory is created if needed.

    Raises:
        LogSchemaError: the rows break the schema (see :func:`validate_log`).
        ValueError: ``rows`` is empty (there is nothing to log).
        OSError: the directory is not writable (no partial or temporary file is left behind).
    """
    clean = validate_log(rows)
    if clean.empty:
        raise ValueError("no served-log rows to write")
    clean = clean.sort_values(["ts", "request_id", "role", "position"], kind="stable").reset_index(drop=True)
    digest = _content_digest(clean)
    first, last = _utc_day(clean["ts"].min()), _utc_day(clean["ts"].max())
    directory = Path(directory)
    path = directory / f"served_{first:%Y%m%d}_{last:%Y%m%d}_{digest[:16]}.parquet"
    if path.exists():
        return path
    buffer = io.BytesIO()
    clean.to_parquet(buffer, index=False, engine="pyarrow")
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass(frozen=True)
class LogProblem:
    """A log file :func:`read_log` could not use (or used only in part), and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{Path(self.path).name}: {self.reason}"


def _day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(datetime.combine(day, time(0), tzinfo=timezone.utc))
    return start, start + pd.Timedelta(days=1)


def read_log(directory: Path, day: date, problems: list[LogProblem] | None = None) -> pd.DataFrame:
    """The served-log rows whose ``ts`` falls on UTC ``day`` (``[00:00, 24:00)``), from every file in ``directory``.

    Files named by :func:`write_log_file` whose day range excludes ``day`` are not opened.  A file that cannot
    be read as Parquet or breaks the schema is skipped, logged as a warning and reported; so are rows that two
    files give differently for the same ``(request_id, role, position)`` (the first file in name order wins).
    Rows repeated identically in several files are kept once.

    Args:
        directory: the log directory (a missing directory is an empty log).
        day: the UTC day to read.
        problems: when given, each :class:`LogProblem` is appended to it.

    Returns:
        a validated frame (:data:`LOG_COLUMNS`, schema dtypes) sorted by ``(ts, request_id, role, position)``;
        its ``attrs["problems"]`` holds the same problems as strings and ``attrs["files"]`` the file names
        read.
    """
    found: list[LogProblem] = []
    frames: list[pd.DataFrame] = []
    used: list[str] = []
    start, end = _day_bounds(day)
    directory = Path(directory)
    paths = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")) if directory.is_dir() else []
    for path in paths:
        match = _FILE_NAME.match(path.name)
        if match:
            first, last = (datetime.strptime(g, "%Y%m%d").date() for g in match.groups()[:2])
            if not first <= day <= last:
                continue
        try:
            frame = validate_log(pd.read_parquet(path, engine="pyarrow"))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
            found.append(LogProblem(str(path), f"unreadable: {type(exc).__name__}: {exc}"))
            continue
        frame = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
        used.append(path.name)
        if not frame.empty:
            frames.append(frame)
    out = pd.concat(frames, ignore_index=True) if frames else empty_log()
    out = out.drop_duplicates(ignore_index=True)
    key = ["request_id", "role", "position"]
    conflicting = out.duplicated(key, keep="first")
    if conflicting.any():
        found.append(LogProblem(str(directory), f"{int(conflicting.sum())} row(s) conflict with another file's rows "
                                                f"for the same (request_id, role, position); the first file's kept"))
        out = out[~conflicting]
    try:
        out = validate_log(out)
    except LogSchemaError as exc:  # files that are each valid can still disagree on a request
        found.append(LogProblem(str(directory), f"files disagree: {exc}; the day's log is ignored"))
        out = empty_log()
    out = out.sort_values(["ts", "request_id", "role", "position"], kind="stable").reset_index(drop=True)
    for problem in found:
        log.warning("served log %s", problem)
    if problems is not None:
        problems.extend(found)
    out.attrs["problems"] = [str(p) for p in found]
    out.attrs["files"] = used
    return out


def recommend_rows(
    model: BlendModel, user_ids: Sequence[str], k: int = K, batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """What the service returns: the top ``k`` item indexes and scores per user, best first.

    ``model.scores`` + :func:`~factory_assets.ml.recsys.metrics.top_k`; a user the model has never seen gets the
    model's cold-start fallback (popularity only).  Scored ``batch`` users at a time.

    Returns:
        ``(items, scores)``: int64 ``(n, min(k, n_items))`` item indexes into ``model.item_ids`` (``-1`` pads)
        and float64 scores of the same shape.
    """
    rows = model.user_rows(np.asarray(list(user_ids), dtype=str))
    width = min(k, len(model.item_ids))
    items = np.empty((len(rows), width), dtype=np.int64)
    scores = np.empty((len(rows), width), dtype=np.float64)
    for lo in range(0, len(rows), batch):
        block = model.scores(rows[lo : lo + batch])
        best = top_k(block, width)
        items[lo : lo + batch] = best
        scores[lo : lo + batch] = np.take_along_axis(block, np.maximum(best, 0), axis=1)
    return items, scores


def replay_from_simulator(
    simulator,
    day: date,
    champion: tuple[int, BlendModel],
    shadow: tuple[int, BlendModel],
    n_requests: int,
    seed: int,
    k: int = K,
) -> pd.DataFrame:
    """Simulate the service on one UTC day: ``n_requests`` requests, each answered by both models.

    The requesting users are drawn without replacement (``np.random.default_rng([seed, day.toordinal()])``)
    from the users active that day in ``simulator.fetch_day(day)``; each request is at the user's *first*
    event of the day, so every purchase of that day by the user comes after it.  Both models rank the whole
    catalogue for the user (:func:`recommend_rows`; a cold user gets the model's popularity fallback) and
    both lists are logged under one ``request_id`` (``replay-<day>-s<seed>-<n>``).

    Args:
        simulator: any source with ``fetch_day(day) -> DayBatch`` (a ``ShopSimulator``).
        day: the UTC day to replay.
        champion, shadow: ``(registry version, model)`` of each role.
        n_requests: requests to simulate (fewer when fewer users were active).
        seed: seed of the user draw.
        k: list length.

    Returns:
        a validated log frame (:data:`LOG_COLUMNS`), ordered by ``(ts, request_id, role, position)``; empty
        when nobody was active.

    Raises:
        ValueError: ``n_requests`` < 0 or ``k`` < 1.
    """
    if n_requests < 0 or k < 1:
        raise ValueError(f"need n_requests >= 0 and k >= 1, got {n_requests} and {k}")
    events = simulator.fetch_day(day).events
    first = events.groupby("user_id", sort=True)["ts"].min().reset_index()
    rng = np.random.default_rng([seed, day.toordinal()])
    take = min(n_requests, len(first))
    chosen = np.sort(rng.choice(len(first), size=take, replace=False)) if take else np.zeros(0, dtype=np.int64)
    who = first.iloc[chosen].sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)
    users = who["user_id"].to_numpy().astype(str)
    times = pd.to_datetime(who["ts"], utc=True).astype("datetime64[us, UTC]")
    request_ids = np.array([f"replay-{day.isoformat()}-s{seed}-{j:06d}" for j in range(take)], dtype=object)
    parts = [empty_log()]
    for role, (version, model) in ((CHAMPION, champion), (SHADOW, shadow)):
        if not take:
            break
        items, scores = recommend_rows(model, users, k)
        valid = items >= 0
        req = np.repeat(np.arange(take), valid.sum(axis=1))
        positions = np.tile(np.arange(1, items.shape[1] + 1), (take, 1))[valid]
        parts.append(
            pd.DataFrame(
                {
                    "request_id": request_ids[req],
                    "ts": times.iloc[req].reset_index(drop=True),
                    "user_id": users[req].astype(object),
                    "model_version": np.full(len(req), int(version), dtype=np.int64),
                    "role": role,
                    "item_id": np.asarray(model.item_ids, dtype=object)[items[valid]],
                    "position": positions.astype(np.int64),
                    "score": scores[valid],
                }
            )
        )
    frame = validate_log(pd.concat(parts, ignore_index=True))
    return frame.sort_values(["ts", "request_id", "role", "position"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class RoleScore:
    """One role's score over the paired requests."""

    model_versions: tuple[int, ...]
    hit_rate_at_10: float
    ndcg_at_10: float
    per_request_hit: np.ndarray = field(repr=False)
    per_request_ndcg: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        return {"model_versions": list(self.model_versions), "hit_rate_at_10": round(self.hit_rate_at_10, 6),
                "ndcg_at_10": round(self.ndcg_at_10, 6)}


@dataclass(frozen=True)
class LogScore:
    """The result of :func:`score_log`.

    Attributes:
        n_requests: requests with both roles logged (the scored, paired requests).
        n_excluded: requests logged for one role only (not scored).
        n_converting: paired requests with at least one attributed purchase.
        request_ids: the paired requests, in the order of every per-request array (sorted).
        roles: ``{"champion": RoleScore, "shadow": RoleScore}``.
        ndcg_diff, hit_diff: per-request shadow minus champion (float64 ``(n_requests,)``).
    """

    k: int
    n_requests: int
    n_excluded: int
    n_converting: int
    request_ids: np.ndarray = field(repr=False)
    roles: dict[str, RoleScore] = field(repr=False)
    ndcg_diff: np.ndarray = field(repr=False)
    hit_diff: np.ndarray = field(repr=False)

    @property
    def ndcg_lift(self) -> float:
        """Mean paired NDCG@k difference, shadow minus champion (0 without requests)."""
        return float(self.ndcg_diff.mean()) if self.n_requests else 0.0

    @property
    def ndcg_lift_se(self) -> float | None:
        """Standard error of :attr:`ndcg_lift` (sample sd / sqrt(n)); None with fewer than 2 requests."""
        if self.n_requests < 2:
            return None
        return float(self.ndcg_diff.std(ddof=1) / np.sqrt(self.n_requests))

    def as_dict(self) -> dict:
        return {
            "k": self.k, "n_requests": self.n_requests, "n_excluded": self.n_excluded,
            "n_converting": self.n_converting, "ndcg_lift": round(self.ndcg_lift, 6),
            "ndcg_lift_se": None if self.ndcg_lift_se is None else round(self.ndcg_lift_se, 6),
            **{role: score.as_dict() for role, score in self.roles.items()},
        }


def attributed_purchases(requests: pd.DataFrame, purchases: pd.DataFrame) -> dict[str, set[str]]:
    """Items each request is credited with under the module's attribution rule.

    Args:
        requests: one row per request: ``request_id``, ``user_id``, ``ts`` (UTC).
        purchases: ``user_id``, ``item_id``, ``ts`` (tz-aware); if it has ``event_type``, only ``purchase``
            rows are used.

    Returns:
        ``request_id -> set of item ids`` purchased by the user in ``(ts, next UTC midnight)``; requests
        without one are absent.
    """
    if "event_type" in purchases.columns:
        purchases = purchases[purchases["event_type"] == "purchase"]
    if requests.empty or purchases.empty:
        return {}
    bought = pd.DataFrame(
        {"user_id": purchases["user_id"].astype(str), "item_id": purchases["item_id"].astype(str),
         "bought_at": pd.to_datetime(purchases["ts"], utc=True)}
    ).reset_index(drop=True)
    req = requests.loc[:, ["request_id", "user_id", "ts"]].reset_index(drop=True)
    req["user_id"] = req["user_id"].astype(str)
    req["ts"] = pd.to_datetime(req["ts"], utc=True)
    req["until"] = req["ts"].dt.floor("D") + pd.Timedelta(days=1)
    joined = req.merge(bought, on="user_id", how="inner")
    inside = joined[(joined["bought_at"] > joined["ts"]) & (joined["bought_at"] < joined["until"])]
    return {rid: set(items) for rid, items in inside.groupby("request_id")["item_id"]}


def score_log(log: pd.DataFrame, purchases: pd.DataFrame, k: int = K) -> LogScore:
    """Score the champion and shadow lists of a log against later purchases (see the module docstring).

    Args:
        log: served-log rows (validated here; any days).
        purchases: ``user_id``, ``item_id``, ``ts`` (tz-aware, UTC) of purchases; with an ``event_type`` column,
            only ``purchase`` rows count.  Must cover each request's attribution window (its UTC day).
        k: cut-off (positions > k are ignored).

    Returns:
        :class:`LogScore`: per role ``hit_rate_at_10`` (share of paired requests with >= 1 attributed item in
        the top k) and ``ndcg_at_10`` (mean binary-relevance NDCG@k via
        :func:`~factory_assets.ml.recsys.metrics.ranking_metrics`, 0 for a request without attributed purchases),
        and the per-request shadow-minus-champion differences.  With no paired request every number is 0.

    Raises:
        LogSchemaError: ``log`` breaks the schema.
    """
    clean = validate_log(log)
    clean = clean[clean["position"] <= k]
    roles_per_request = clean.groupby("request_id")["role"].nunique()
    paired_ids = np.sort(roles_per_request.index[roles_per_request == len(ROLES)].to_numpy().astype(str))
    n_excluded = int((roles_per_request < len(ROLES)).sum())
    paired = clean[clean["request_id"].isin(set(paired_ids))]
    n = len(paired_ids)
    requests = paired.drop_duplicates("request_id").set_index("request_id").loc[paired_ids].reset_index()
    truth_items = attributed_purchases(requests, purchases)

    vocabulary = np.unique(np.concatenate([paired["item_id"].to_numpy(dtype=str),
                                           np.array([i for s in truth_items.values() for i in s], dtype=str)]))
    index = {item: j for j, item in enumerate(vocabulary)}
    truth = [{index[i] for i in truth_items.get(rid, ())} for rid in paired_ids]
    converting = np.array([len(t) > 0 for t in truth], dtype=bool)
    position_of = {rid: j for j, rid in enumerate(paired_ids)}

    scores: dict[str, RoleScore] = {}
    for role in ROLES:
        rows = paired[paired["role"] == role]
        recommended = np.full((n, k), -1, dtype=np.int64)
        if n:
            r = rows["request_id"].map(position_of).to_numpy(dtype=np.int64)
            c = rows["position"].to_numpy(dtype=np.int64) - 1
            recommended[r, c] = rows["item_id"].map(index).to_numpy(dtype=np.int64)
        ndcg = np.zeros(n)
        if converting.any():
            report = ranking_metrics(recommended[converting], [t for t, c in zip(truth, converting) if c], len(vocabulary), k)
            ndcg[converting] = report.per_user_ndcg
        hit = np.array([any(int(i) in t for i in row if i >= 0) for row, t in zip(recommended, truth)], dtype=np.float64)
        scores[role] = RoleScore(
            model_versions=tuple(sorted(int(v) for v in rows["model_version"].unique())),
            hit_rate_at_10=float(hit.mean()) if n else 0.0,
            ndcg_at_10=float(ndcg.mean()) if n else 0.0,
            per_request_hit=hit,
            per_request_ndcg=ndcg,
        )
    return LogScore(
        k=k, n_requests=n, n_excluded=n_excluded, n_converting=int(converting.sum()), request_ids=paired_ids,
        roles=scores,
        ndcg_diff=scores[SHADOW].per_request_ndcg - scores[CHAMPION].per_request_ndcg,
        hit_diff=scores[SHADOW].per_request_hit - scores[CHAMPION].per_request_hit,
    )


def version_pairs(log: pd.DataFrame) -> list[tuple[int, int]]:
    """The distinct ``(champion_version, shadow_version)`` pairs of a validated log's paired requests, sorted."""
    lists = log.drop_duplicates(["request_id", "role"])
    wide = lists.pivot(index="request_id", columns="role", values="model_version").dropna()
    if wide.empty or not set(ROLES) <= set(wide.columns):
        return []
    return sorted({(int(c), int(s)) for c, s in zip(wide[CHAMPION], wide[SHADOW])})


def requests_of_pair(log: pd.DataFrame, champion_version: int, shadow_version: int) -> pd.DataFrame:
    """The rows of the requests whose champion list came from ``champion_version`` and shadow list from
    ``shadow_version`` (both lists; requests logged for one role are dropped)."""
    lists = log.drop_duplicates(["request_id", "role"]).set_index(["request_id", "role"])["model_version"]
    champ = lists.xs(CHAMPION, level="role") if CHAMPION in lists.index.get_level_values("role") else pd.Series(dtype="int64")
    shad = lists.xs(SHADOW, level="role") if SHADOW in lists.index.get_level_values("role") else pd.Series(dtype="int64")
    keep = set(champ.index[champ == champion_version]) & set(shad.index[shad == shadow_version])
    return log[log["request_id"].isin(keep)].reset_index(drop=True)


@dataclass(frozen=True)
class ShadowVerdict:
    """Whether the shadow has proved better: ``promote``, the ``reason`` and the days it rests on."""

    promote: bool
    reason: str
    days: tuple[date, ...]


def shadow_verdict(
    history: pd.DataFrame,
    champion_version: int,
    shadow_version: int,
    until: date,
    min_days: int = 3,
    min_lift: float = 0.0,
    min_requests: int = 1,
) -> ShadowVerdict:
    """The promotion rule on the scored days of one (champion, shadow) pair.

    The shadow is promoted when the pair was scored (``n_requests >= min_requests``) on at least ``min_days``
    days up to and including ``until`` and, on each of the last ``min_days`` of them,
    ``shadow_ndcg_at_10 - champion_ndcg_at_10 > min_lift``.

    Args:
        history: rows of the ``shadow_scores`` table: ``day`` (date), ``champion_version``,
            ``shadow_version``, ``n_requests``, ``champion_ndcg_at_10``, ``shadow_ndcg_at_10`` (other pairs and
            days are ignored).

    Raises:
        ValueError: ``min_days`` < 1.
    """
    if min_days < 1:
        raise ValueError(f"min_days must be >= 1, got {min_days}")
    frame = history.copy()
    if frame.empty:
        frame = pd.DataFrame(columns=["day", "champion_version", "shadow_version", "n_requests",
                                      "champion_ndcg_at_10", "shadow_ndcg_at_10"])
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    mine = frame[
        (frame["champion_version"] == champion_version) & (frame["shadow_version"] == shadow_version)
        & (frame["day"] <= until) & (frame["n_requests"] >= max(min_requests, 1))
    ].sort_values("day")
    pair = f"shadow v{shadow_version} vs champion v{champion_version}"
    if len(mine) < min_days:
        return ShadowVerdict(False, f"keep collecting: {pair} scored on {len(mine)} of {min_days} days needed", tuple(mine["day"]))
    last = mine.tail(min_days)
    lifts = (last["shadow_ndcg_at_10"] - last["champion_ndcg_at_10"]).to_numpy(dtype=np.float64)
    detail = ", ".join(
        f"{d.isoformat()} {s:.4f} vs {c:.4f} ({int(n)} requests)"
        for d, s, c, n in zip(last["day"], last["shadow_ndcg_at_10"], last["champion_ndcg_at_10"], last["n_requests"])
    )
    days = tuple(last["day"])
    if np.all(lifts > min_lift):
        return ShadowVerdict(
            True, f"{pair}: NDCG@10 higher by more than {min_lift:g} on each of the last {min_days} days: {detail}", days
        )
    worse = sum(1 for x in lifts if not x > min_lift)
    return ShadowVerdict(
        False, f"keep collecting: {pair} did not beat the champion by more than {min_lift:g} on {worse} of the last "
        f"{min_days} days: {detail}", days
    )
