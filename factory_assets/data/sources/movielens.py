"""MovieLens star ratings as ``rating`` events.

Dataset: MovieLens ``ml-latest-small`` (100,836 ratings by 610 users, 1996-03-29 to 2018-09-24), published by
GroupLens Research, University of Minnesota.  Cite F. Maxwell Harper and Joseph A. Konstan (2015), "The
MovieLens Datasets: History and Context", ACM Transactions on Interactive Intelligent Systems (TiiS)
5(4):19, doi:10.1145/2827872.  Licence: the GroupLens usage licence (research use, acknowledge in
publications, redistribute only under the same terms, **no commercial use without permission**); it is
not an open-source licence.

Input: ``ratings.csv`` with columns ``userId,movieId,rating,timestamp`` (``timestamp`` in Unix seconds,
UTC).  Mapping of data row ``line`` (0-based):

* ``event_id`` = ``"ml:{line}"`` (stable across re-reads of an unchanged file);
* ``user_id`` = ``userId`` as text, ``item_id`` = ``movieId`` as text;
* ``event_type`` = ``"rating"``, ``quantity`` = 1, ``value`` = ``rating`` (stars, 0.5-5 in half steps);
* ``ts`` = ``timestamp`` as a UTC instant.

Rows whose ``timestamp`` is missing or not a number are quarantined as ``bad_timestamp`` with no day
(:meth:`MovieLensSource.undated_quarantine`); every other row check is left to
:func:`~factory_assets.data.sources.schema.validate_events`, run per fetched day.  The rating is not checked
against the 0.5-5 range.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from factory_assets.data.sources.base import DayBatch, EventSource, PermanentSourceError, TransientSourceError
from factory_assets.data.sources.schema import (
    EVENT_COLUMNS,
    QUARANTINE_COLUMNS,
    empty_quarantine,
    quarantine_rows,
    validate_events,
)

RATINGS_FILE = "ratings.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("userId", "movieId", "rating", "timestamp")

_DAY_US = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class MovieLensSource(EventSource):
    """Rating events from a MovieLens ``ratings.csv``, one UTC day at a time.

    Args:
        path: the ``ratings.csv`` file, or the directory holding it (e.g. ``ml-latest-small/``).

    ``window_days`` is 365: ml-latest-small has ratings on 4,110 distinct days over 22 years, median 3 a
    day, so a 28-day window would hold almost nothing to train on.

    The constructor does no I/O.  The file is parsed once, on first use (or :meth:`load`), and cached in
    the instance and in a module-level cache keyed by (resolved path, mtime_ns, size).

    Errors (raised by :meth:`load`, :meth:`fetch_day` and the other readers, never by the constructor):
        PermanentSourceError: the path does not exist, the directory has no ``ratings.csv``, the file
            cannot be parsed, or columns are missing (the message names the file and the columns).
        TransientSourceError: an ``OSError`` while reading a file that exists.
    """

    name = "movielens"
    #: MovieLens activity is far too sparse for a 28-day window (median 3 ratings a day); use a year.
    window_days = 365

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._parsed: _Parsed | None = None

    def load(self) -> MovieLensSource:
        """Parse (or fetch from the cache) the whole file now; returns ``self``.  Raises as the class says."""
        self._get()
        return self

    def fetch_day(self, day: date) -> DayBatch:
        """The accepted rating events and quarantined rows of one UTC day ``[00:00, 24:00)``.

        Returns:
            :class:`~factory_assets.data.sources.base.DayBatch`; ``events`` has exactly
            :data:`~factory_assets.data.sources.schema.EVENT_COLUMNS` (``ts`` ``datetime64[us, UTC]``,
            ``quantity`` ``int64`` = 1, ``value`` ``float64`` stars), sorted by ``(ts, event_id)``;
            ``quarantined`` has :data:`~factory_assets.data.sources.schema.QUARANTINE_COLUMNS` with
            ``source_file`` = ``"ratings.csv"`` and ``source_line`` = data row + 2 (1-based, after the header).

        Raises:
            PermanentSourceError, TransientSourceError: as described on the class.
        """
        return self._get().fetch_day(day)

    def fetch_all(self) -> DayBatch:
        """Every accepted event and every quarantined row of the file (undated ones included)."""
        return self._get().fetch_all()

    def undated_quarantine(self) -> pd.DataFrame:
        """Rows whose ``timestamp`` is missing or not a number (``bad_timestamp``), as a copy."""
        return self._get().undated.copy()

    def days(self) -> list[date]:
        """Sorted UTC days that have at least one rating."""
        return [date.fromordinal(n + _EPOCH_ORDINAL) for n in sorted(self._get().slices)]

    @property
    def rows_read(self) -> int:
        """Number of data rows read from ``ratings.csv``."""
        return self._get().rows_read

    def describe(self) -> dict[str, str]:
        """Small JSON-able description for asset metadata (no I/O)."""
        return {
            "source": self.name,
            "path": str(self.path),
            "window_days": str(self.window_days),
            "dataset": "MovieLens ml-latest-small (GroupLens; Harper & Konstan 2015, ACM TiiS)",
        }

    def _get(self) -> _Parsed:
        if self._parsed is None:
            file = _ratings_file(self.path)
            st = file.stat()
            key = (str(file.resolve()), st.st_mtime_ns, st.st_size)
            self._parsed = _cached_parse(key, file)
        return self._parsed


def clear_cache() -> None:
    """Forget every parsed file held by the module-level cache (instances keep their own copy)."""
    with _CACHE_LOCK:
        _CACHE.clear()


@dataclass
class _Parsed:
    candidates: pd.DataFrame  # event columns + source_file/source_line, sorted by UTC day
    slices: dict[int, tuple[int, int]]  # day number -> [start, end) rows of candidates
    undated: pd.DataFrame
    rows_read: int

    def fetch_day(self, day: date) -> DayBatch:
        a, b = self.slices.get(day.toordinal() - _EPOCH_ORDINAL, (0, 0))
        events, invalid = validate_events(self.candidates.iloc[a:b], day)
        return DayBatch(events=events, quarantined=invalid.loc[:, list(QUARANTINE_COLUMNS)])

    def fetch_all(self) -> DayBatch:
        events, invalid = validate_events(self.candidates, None)
        frames = [f for f in (self.undated, invalid) if len(f)]
        quarantined = (
            pd.concat(frames, ignore_index=True).astype({"source_line": "Int64"}) if frames else empty_quarantine()
        )
        return DayBatch(events=events, quarantined=quarantined.loc[:, list(QUARANTINE_COLUMNS)])


_CACHE: OrderedDict[tuple, _Parsed] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _cached_parse(key: tuple, file: Path) -> _Parsed:
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        parsed = _parse(file)
        _CACHE[key] = parsed
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return parsed


def _ratings_file(path: Path) -> Path:
    if not path.exists():
        raise PermanentSourceError(f"MovieLens input {str(path)!r} does not exist")
    if path.is_dir():
        file = path / RATINGS_FILE
        if not file.is_file():
            raise PermanentSourceError(f"MovieLens directory {str(path)!r} has no {RATINGS_FILE}")
        return file
    return path


def _read(file: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError as exc:
        raise TransientSourceError(f"MovieLens file {str(file)!r} vanished while reading: {exc}") from exc
    except PermissionError as exc:
        raise PermanentSourceError(f"MovieLens file {str(file)!r} is not readable: {exc}") from exc
    except OSError as exc:
        if type(exc) is OSError or isinstance(exc, (TimeoutError, ConnectionError, InterruptedError)):
            raise TransientSourceError(f"reading MovieLens file {str(file)!r} failed: {exc}") from exc
        raise PermanentSourceError(f"MovieLens file {str(file)!r} cannot be parsed: {exc}") from exc
    except Exception as exc:  # parser / decoding errors: the file itself is bad
        raise PermanentSourceError(f"MovieLens file {str(file)!r} cannot be parsed: {exc}") from exc


def _parse(file: Path) -> _Parsed:
    raw = _read(file)
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise PermanentSourceError(
            f"MovieLens file {str(file)!r} is missing column(s) {missing}; got columns {list(raw.columns)}"
        )
    n = len(raw)
    position = np.arange(n)
    seconds = pd.to_numeric(raw["timestamp"].str.strip(), errors="coerce")
    finite = np.isfinite(seconds.to_numpy(dtype="float64"))
    # Beyond +-1e11 s (year ~5000) pandas cannot represent the instant; treat as unparseable.
    usable = finite & (np.abs(np.nan_to_num(seconds.to_numpy(dtype="float64"))) < 1e11)
    ts = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
    ts[usable] = pd.to_datetime(seconds[usable], unit="s", utc=True).astype("datetime64[us, UTC]")

    frame = pd.DataFrame(
        {
            "event_id": [f"ml:{i}" for i in range(n)],
            "user_id": raw["userId"].str.strip(),
            "item_id": raw["movieId"].str.strip(),
            "event_type": "rating",
            "ts": ts,
            "quantity": np.ones(n, dtype="int64"),
            "value": pd.to_numeric(raw["rating"].str.strip(), errors="coerce").astype("float64"),
            "source_file": file.name,
            "source_line": position + 2,
        }
    )
    bad = ~usable
    undated = (
        quarantine_rows(frame[bad], "bad_timestamp", "timestamp=" + raw["timestamp"][bad].fillna("<null>")
                        + " is not Unix seconds")
        if bad.any()
        else empty_quarantine()
    )
    good = frame[usable]
    us = good["ts"].dt.tz_localize(None).to_numpy().astype("datetime64[us]").view("int64")
    day = np.floor_divide(us, _DAY_US)
    order = np.argsort(day, kind="stable")
    candidates = good.iloc[order].reset_index(drop=True).loc[:, [*EVENT_COLUMNS, "source_file", "source_line"]]
    day = day[order]
    slices: dict[int, tuple[int, int]] = {}
    if len(day):
        uniq, starts = np.unique(day, return_index=True)
        ends = np.append(starts[1:], len(day))
        slices = {int(d): (int(s), int(e)) for d, s, e in zip(uniq, starts, ends)}
    return _Parsed(candidates=candidates, slices=slices, undated=undated.loc[:, list(QUARANTINE_COLUMNS)],
                   rows_read=n)
