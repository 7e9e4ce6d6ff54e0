"""A landing folder of CSV and Parquet files in the event schema, read one UTC day at a time.

An upstream system (or the recommendation service) drops files into one directory.  Writers land files
atomically by renaming, so names that start with ``.`` or end with ``.tmp``/``.part`` are still being
written and are ignored; so is everything that does not end with ``.csv`` or ``.parquet`` (case-insensitive).
Symbolic links are never followed: a link in the folder (to a file or a directory, inside or outside the
folder) is ignored and logged once per process as a warning (logger ``factory_assets.data.sources.folder``), and a
file is opened without following links, so nothing whose resolved path lies outside the folder is read.

Every file holds rows in the event schema (:data:`~factory_assets.data.sources.schema.EVENT_COLUMNS`); extra
columns are ignored.  A file may span several days: :meth:`FolderSource.fetch_day` reads every landed file
and returns exactly the rows of the requested UTC day.

Reading a file
--------------

* CSV: decoded as UTF-8 (a leading BOM is dropped, ``utf-8-sig``); anything else makes the file unreadable.
  Every field is kept as text, so ids such as ``"007"`` keep their zeros; empty id fields are null.  Quoted
  commas and newlines, CRLF/LF/CR line endings work.  Blank lines are skipped.  A record with a different
  number of fields than the header is quarantined (``malformed_row``, undated: its ``ts`` cannot be trusted).
  A record with a field longer than :data:`~factory_assets.data.sources.schema.MAX_CSV_FIELD` characters
  (131 072, Python csv's default ``field_size_limit``) is quarantined alone (``field_too_large``, undated, the
  detail names the file, line, field and its length in characters); the file's other records are read.  The
  limit holds whatever ``csv.field_size_limit`` the process has set, and the oversized field is never stored.
* Parquet: the required columns are cast to the schema: ids and ``event_type`` from string or integer to
  text, ``ts`` from a timestamp (naive = UTC), a date or ISO text, ``quantity``/``value`` from integer,
  float, decimal or text.  Other types (booleans, lists, a boolean ``ts`` ...) make the file unreadable.
* ``source_line`` is 1-based, as a person counts lines in an editor: for CSV the header is line 1 and a
  record's line is the *physical* line where it starts, so a quoted field with an embedded newline makes
  the next record start one line later (CRLF counts as one line end); for Parquet it is row index + 1.
* A 0-byte file, a CSV with only a header (or only blank lines) and a Parquet file without rows give
  nothing and are not an error.

Timestamps
----------

ISO-8601 text with an offset (``+02:00``, ``Z``) is converted to UTC; naive text is UTC.  Rows whose ``ts``
is missing or unparseable (``bad_timestamp``), before 1970-01-01 UTC (``ts_before_1970``) or later than
*now* + :data:`FUTURE_TOLERANCE` (``ts_in_future``) belong to no day: they are returned in
:attr:`DayBatch.undated` of every fetch (the warehouse writer stores each ``(source_sha256, source_line,
reason)`` once).  A future row becomes an ordinary row of its day once its time has come.

Rows of the day
---------------

The day's rows of all files, in file-name then line order, go through
:func:`~factory_assets.data.sources.schema.validate_events` (missing or too long ids, unknown event types, bad
quantities, NaN/inf values, duplicate event ids: the first *valid* occurrence in file-name then line order
wins, later ones are ``duplicate_event_id``).  The same event id on two different days is allowed.

Files that cannot be read
-------------------------

A truncated or garbage Parquet file, a CSV that is not UTF-8 (or whose header has a field over the limit), a
file missing a required column, a Parquet column of a type that cannot be cast: ONE undated quarantine row
(reason ``unreadable_file`` or ``missing_column``, ``source_line`` null, ``detail`` naming the file and the
problem), and the other files are read as usual.

Every row read is in exactly one place: an accepted event of its day, the quarantine of its day, or the
undated quarantine.  Parsed files are cached per process, keyed by ``(resolved path, size, mtime_ns)``
with the sha256 of the bytes (the file's identity in ``ingestion_log`` and the quarantine).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import itertools
import logging
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory_assets.data.sources.base import DayBatch, EventSource, FileIngest, PermanentSourceError, TransientSourceError
from factory_assets.data.sources.schema import (
    EVENT_COLUMNS,
    MAX_CSV_FIELD,
    empty_events,
    concat_quarantine,
    day_slices,
    empty_quarantine,
    quarantine_rows,
    validate_events,
)
from factory_assets.data.sources.validation import utc_microseconds

#: File name endings that are read (case-insensitive).
SUFFIXES: tuple[str, ...] = (".csv", ".parquet")
#: File name endings of files still being written (ignored, like names starting with ``.``).
IGNORED_SUFFIXES: tuple[str, ...] = (".tmp", ".part")
#: Rows up to this much later than the time of reading are still accepted (clock skew).
FUTURE_TOLERANCE = timedelta(minutes=5)

log = logging.getLogger(__name__)

ID_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "item_id")
SOURCE_COLUMNS: tuple[str, ...] = ("source_file", "source_line", "source_sha256")

_DAY_US = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MAX_DETAIL = 300


class FolderSource(EventSource):
    """Events from the CSV/Parquet files of a landing directory, one UTC day at a time.

    Args:
        path: the landing directory.  The constructor does no I/O.
        clock: returns "now" (tz-aware); rows later than ``clock() + FUTURE_TOLERANCE`` are undated
            ``ts_in_future``.  Defaults to the system clock in UTC (tests pass a fixed one).

    Errors (from :meth:`fetch_day` and :meth:`days`):
        PermanentSourceError: the landing directory does not exist or is not a directory.
        TransientSourceError: a file vanished or changed while it was read, or an ``OSError`` such as a
            flaky share; a retry sees a consistent folder.
    Bad files and bad rows never raise: they are quarantined as the module describes.
    """

    name = "folder"
    window_days = 28

    def __init__(self, path: str | Path, clock: Callable[[], datetime] | None = None) -> None:
        self.path = Path(path)
        self._clock = clock

    def fetch_day(self, day: date) -> DayBatch:
        """The rows of every landed file whose ``ts`` is on ``day`` (UTC ``[00:00, 24:00)``).

        Returns:
            :class:`~factory_assets.data.sources.base.DayBatch` with

            * ``events``: :data:`~factory_assets.data.sources.schema.EVENT_COLUMNS` (text ids, ``ts``
              ``datetime64[us, UTC]``, ``quantity`` ``int64``, ``value`` ``float64``), sorted by
              ``(ts, event_id)``;
            * ``quarantined``: the day's rejected rows (:data:`~factory_assets.data.sources.schema.QUARANTINE_COLUMNS`,
              ``ts`` as UTC ISO text), sorted by ``(source_file, source_line)``;
            * ``undated``: rows of no day of *all* landed files (bad/pre-1970/future timestamps, malformed
              CSV records, one row per unreadable file), the same every fetch of an unchanged folder;
            * ``files``: one :class:`~factory_assets.data.sources.base.FileIngest` per file with at least one
              accepted or quarantined row on ``day``, in file-name order.

        Raises:
            PermanentSourceError, TransientSourceError: as described on the class.
        """
        parsed = [_load(f) for f in landed_files(self.path)]
        limit = self._limit()
        number = day.toordinal() - _EPOCH_ORDINAL
        parts: list[pd.DataFrame] = []
        undated: list[pd.DataFrame] = []
        for p in parsed:
            undated.append(p.undated)
            undated.append(p.future(limit))
            rows = p.rows_of_day(number, limit)
            if len(rows):
                parts.append(rows)
        if parts:
            frame = pd.concat(parts, ignore_index=True)
            events, quarantined = validate_events(frame, day)
            quarantined = quarantined.sort_values(["source_file", "source_line"], kind="stable").reset_index(drop=True)
            read = frame["source_file"].value_counts()
            rejected = quarantined["source_file"].value_counts()
            files = tuple(
                FileIngest(
                    name=p.name,
                    sha256=p.sha256,
                    size_bytes=p.size_bytes,
                    rows_accepted=int(read.get(p.name, 0)) - int(rejected.get(p.name, 0)),
                    rows_quarantined=int(rejected.get(p.name, 0)),
                )
                for p in parsed
                if int(read.get(p.name, 0)) > 0
            )
        else:
            events, quarantined, files = empty_events(), empty_quarantine(), ()
        undated_frame = concat_quarantine(undated).sort_values(["source_file", "source_line"], kind="stable")
        undated_frame = undated_frame.reset_index(drop=True)
        return DayBatch(events=events, quarantined=quarantined, undated=undated_frame, files=files)

    def days(self) -> list[date]:
        """Sorted UTC days on which at least one landed file has a (dated, not future) row.  Raises as the class."""
        limit = self._limit()
        out: set[date] = set()
        for f in landed_files(self.path):
            out |= _load(f).days(limit)
        return sorted(out)

    def describe(self) -> dict[str, str]:
        """Small JSON-able description for asset metadata (no I/O)."""
        return {"source": self.name, "path": str(self.path), "window_days": str(self.window_days)}

    def _limit(self) -> pd.Timestamp:
        now = self._clock() if self._clock is not None else datetime.now(timezone.utc)
        return pd.Timestamp(now).tz_convert("UTC") + FUTURE_TOLERANCE


def landed_files(path: str | Path) -> list[Path]:
    """The files of landing directory ``path`` that are read, sorted by name.

    Only regular files ending in ``.csv`` or ``.parquet`` (case-insensitive) whose name does not start with
    ``.`` and does not end with ``.tmp``/``.part``.  Symbolic links are left out, whatever they point to; one
    with such a name is logged as a warning once per process (per link and target).

    Raises:
        PermanentSourceError: ``path`` does not exist or is not a directory (the message names it).
        TransientSourceError: listing the directory failed with another ``OSError``.
    """
    root = Path(path)
    if not root.is_dir():
        if root.exists():
            raise PermanentSourceError(f"landing path {str(root)!r} is not a directory")
        raise PermanentSourceError(f"landing directory {str(root)!r} does not exist")
    try:
        with os.scandir(root) as listing:
            entries = [e for e in listing if is_landed_name(e.name)]
    except FileNotFoundError as exc:
        raise PermanentSourceError(f"landing directory {str(root)!r} does not exist") from exc
    except OSError as exc:
        raise TransientSourceError(f"listing landing directory {str(root)!r} failed: {exc}") from exc
    files: list[Path] = []
    for entry in entries:
        try:
            if entry.is_symlink():
                _warn_link_once(root, entry.name)
            elif entry.is_file(follow_symlinks=False):
                files.append(root / entry.name)
        except OSError:  # vanished while listed: not landed (any more)
            continue
    return sorted(files, key=lambda p: p.name)


def _warn_link_once(root: Path, name: str) -> None:
    """Log that symbolic link ``root/name`` is ignored, once per process per (link, target)."""
    link = root / name
    try:
        target = os.readlink(link)  # the link's text; the target itself is never touched
    except OSError:
        target = "?"
    key = (str(link), target)
    with _CACHE_LOCK:
        if key in _LINKS_WARNED:
            return
        if len(_LINKS_WARNED) >= _CACHE_SIZE:
            _LINKS_WARNED.clear()
        _LINKS_WARNED.add(key)
    log.warning(
        "landing folder %s: ignoring %r, a symbolic link (to %r); links are never followed, land the file itself",
        root,
        name,
        target,
    )


def is_landed_name(name: str) -> bool:
    """Whether a file called ``name`` is a finished landed file (see :func:`landed_files`)."""
    lower = name.lower()
    return not name.startswith(".") and not lower.endswith(IGNORED_SUFFIXES) and lower.endswith(SUFFIXES)


def partitions_touched(file: str | Path, now: datetime | None = None) -> set[date]:
    """UTC days on which ``file`` has at least one dated row, accepted or quarantined.

    For a sensor that requests exactly the partitions a newly landed file changes: a day whose rows are all
    rejected still changes (its quarantine and ingestion log).  Undated rows touch no day.

    Args:
        file: a ``.csv`` or ``.parquet`` file (in the event schema).
        now: the time of reading (tz-aware; default the system clock), for the ``ts_in_future`` cut-off.

    Raises:
        PermanentSourceError: ``file`` does not exist, is not a regular file or is a symbolic link (never
            followed, see :func:`landed_files`).
        TransientSourceError: as :meth:`FolderSource.fetch_day`.
    """
    path = Path(file)
    if path.is_symlink():
        raise PermanentSourceError(f"landed file {str(path)!r} is a symbolic link, which is never read")
    if not path.is_file():
        raise PermanentSourceError(f"landed file {str(path)!r} does not exist or is not a file")
    limit = pd.Timestamp(now or datetime.now(timezone.utc)).tz_convert("UTC") + FUTURE_TOLERANCE
    return set(_load(path).days(limit))


def clear_cache() -> None:
    """Forget every parsed file held by the module-level cache, and which symbolic links were logged."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _LINKS_WARNED.clear()


# ---------------------------------------------------------------------------------------------------------
# One parsed file


@dataclass(frozen=True)
class _ParsedFile:
    name: str
    sha256: str | None
    size_bytes: int
    data_rows: int  # records read (dated, undated and malformed); 0 for an unreadable file
    candidates: pd.DataFrame  # EVENT_COLUMNS + SOURCE_COLUMNS, ts datetime64[us, UTC] >= 1970, sorted (day, line)
    day_slices: dict[int, tuple[int, int]]  # day number -> [start, end) rows of candidates
    undated: pd.DataFrame  # quarantine rows of no day that do not depend on the clock

    def rows_of_day(self, number: int, limit: pd.Timestamp) -> pd.DataFrame:
        a, b = self.day_slices.get(number, (0, 0))
        rows = self.candidates.iloc[a:b]
        if len(rows) and (rows["ts"] > limit).any():
            rows = rows[rows["ts"] <= limit]
        return rows

    def future(self, limit: pd.Timestamp) -> pd.DataFrame:
        if not len(self.candidates):
            return empty_quarantine()
        late = self.candidates["ts"] > limit
        if not late.any():
            return empty_quarantine()
        rows = self.candidates[late]
        later = f" is later than now + tolerance ({limit.isoformat()})"
        detail = "ts=" + rows["ts"].map(pd.Timestamp.isoformat) + later
        return quarantine_rows(rows, "ts_in_future", detail)

    def days(self, limit: pd.Timestamp) -> set[date]:
        ts = self.candidates["ts"]
        return {
            date.fromordinal(n + _EPOCH_ORDINAL) for n, (a, b) in self.day_slices.items() if ts.iloc[a:b].min() <= limit
        }


_CACHE: OrderedDict[tuple[str, int, int], _ParsedFile] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 1024
_LINKS_WARNED: set[tuple[str, str]] = set()  # (link, target) already logged by landed_files
_NO_FOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _load(path: Path) -> _ParsedFile:
    """The parsed file, from the cache when ``(resolved path, size, mtime_ns)`` is unchanged.

    ``path`` is opened without following a symbolic link (``O_NOFOLLOW``); a path that is (or became, after
    :func:`landed_files` listed it) a link or anything but a regular file raises ``TransientSourceError``
    unread: a retry lists the folder again and leaves it out.
    """
    try:
        before = path.lstat()
        if not stat.S_ISREG(before.st_mode):
            raise TransientSourceError(f"landed file {str(path)!r} changed while it was read ({_kind(before)})")
        key = (str(path.resolve()), before.st_size, before.st_mtime_ns)
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        try:
            fd = os.open(path, _NO_FOLLOW)
        except PermissionError as exc:  # not retryable, but only this file is lost
            return _unreadable(path.name, None, before.st_size, "unreadable_file", f"permission denied ({exc})")
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
                raise TransientSourceError(f"landed file {str(path)!r} changed while it was read ({_LINK})") from exc
            raise
        with os.fdopen(fd, "rb") as handle:
            opened = os.fstat(handle.fileno())
            if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(opened.st_mode):
                raise TransientSourceError(f"landed file {str(path)!r} changed while it was read")
            data = handle.read()
        after = path.lstat()
    except FileNotFoundError as exc:
        raise TransientSourceError(f"landed file {str(path)!r} vanished while it was read") from exc
    except OSError as exc:
        raise TransientSourceError(f"reading landed file {str(path)!r} failed: {exc}") from exc
    unchanged = (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_dev,
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    if not unchanged or len(data) != before.st_size:
        raise TransientSourceError(f"landed file {str(path)!r} changed while it was read")
    parsed = _parse_bytes(path.name, data)
    with _CACHE_LOCK:
        _CACHE[key] = parsed
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return parsed


_LINK = "now a symbolic link, which is never followed"


def _kind(info: os.stat_result) -> str:
    if stat.S_ISLNK(info.st_mode):
        return _LINK
    if stat.S_ISDIR(info.st_mode):
        return "now a directory"
    return "no longer a regular file"


class _FileProblem(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _parse_bytes(name: str, data: bytes) -> _ParsedFile:
    """Parse one file's bytes into dated candidates and undated quarantine rows (never raises)."""
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return _nothing(name, sha, 0)
    try:
        if name.lower().endswith(".parquet"):
            raw, malformed = _read_parquet(data), empty_quarantine()
        else:
            raw, malformed = _read_csv(name, data)
    except _FileProblem as problem:
        return _unreadable(name, sha, len(data), problem.reason, problem.detail)
    raw["source_file"] = name
    raw["source_sha256"] = sha
    if len(malformed):
        malformed["source_file"] = name
        malformed["source_sha256"] = sha
    data_rows = len(raw) + len(malformed)
    if not len(raw):
        return _ParsedFile(name, sha, len(data), data_rows, _empty_candidates(), {}, malformed)

    us, unparseable = utc_microseconds(raw["ts"])
    before_1970 = ~unparseable & (us < 0)
    undated = [malformed]
    if unparseable.any():
        bad = raw[unparseable]
        text = bad["ts"].map(_raw_text)
        detail = text.map(lambda t: "ts is empty" if t is None else f"ts={t[:80]!r} is not an ISO-8601 timestamp")
        undated.append(quarantine_rows(bad, "bad_timestamp", detail))
    if before_1970.any():
        old = raw[before_1970]
        detail = "ts=" + old["ts"].map(_raw_text).astype(str).str[:80] + " is before 1970-01-01T00:00:00Z"
        undated.append(quarantine_rows(old, "ts_before_1970", detail))

    ok = ~unparseable & ~before_1970
    candidates = raw[ok].copy()
    candidates["ts"] = pd.Series(us[ok].astype("datetime64[us]"), index=candidates.index).dt.tz_localize("UTC")
    day = us[ok] // _DAY_US
    order = np.argsort(day, kind="stable")
    candidates = candidates.iloc[order].loc[:, [*EVENT_COLUMNS, *SOURCE_COLUMNS]].reset_index(drop=True)
    undated_frame = concat_quarantine(undated)
    undated_frame = undated_frame.sort_values("source_line", kind="stable").reset_index(drop=True)
    return _ParsedFile(name, sha, len(data), data_rows, candidates, day_slices(day[order]), undated_frame)


def _nothing(name: str, sha: str | None, size: int) -> _ParsedFile:
    return _ParsedFile(name, sha, size, 0, _empty_candidates(), {}, empty_quarantine())


def _unreadable(name: str, sha: str | None, size: int, reason: str, detail: str) -> _ParsedFile:
    """A file that gives nothing but ONE undated quarantine row (``source_line`` null)."""
    row = pd.DataFrame({"source_file": [name], "source_line": pd.array([pd.NA], dtype="Int64"), "source_sha256": [sha]})
    text = f"{name}: {detail}"
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return _ParsedFile(name, sha, size, 0, _empty_candidates(), {}, quarantine_rows(row, reason, text))


def _empty_candidates() -> pd.DataFrame:
    frame = empty_events()
    frame["source_file"] = pd.Series([], dtype=object)
    frame["source_line"] = pd.Series([], dtype="int64")
    frame["source_sha256"] = pd.Series([], dtype=object)
    return frame


# ---------------------------------------------------------------------------------------------------------
# CSV


_LINE_END = re.compile(r"\r\n|\r|\n")  # how io.StringIO(newline="") splits lines


def _line_offset(text: str, line: int, known: tuple[int, int]) -> int:
    """Character offset where 1-based physical ``line`` of ``text`` starts, counting on from ``known``
    ``(line, offset)`` (an earlier line's start), so successive calls pass over the text once."""
    before, offset = known
    if line == before:
        return offset
    ends = _LINE_END.finditer(text, offset)
    found = next(itertools.islice(ends, line - before - 1, None), None)
    return found.end() if found is not None else len(text)


def _line_count(text: str, begin: int, end: int) -> int:
    """Physical lines of ``text[begin:end]`` (a last line without a line end counts)."""
    ends = text.count("\n", begin, end) + text.count("\r", begin, end) - text.count("\r\n", begin, end)
    return ends + (end > begin and text[end - 1] not in "\r\n")


_UNQUOTED_END = re.compile(r"[,\r\n]")


def _field_sizes(text: str, start: int) -> tuple[list[int], int]:
    """The length (characters, as csv counts them) of each field of the record at ``text[start:]``, and its end.

    Follows :func:`csv.reader` with the default dialect: a field that starts with ``"`` is quoted up to the
    next single ``"`` (``""`` is one quote, line ends are data), anything after the closing quote up to the next
    ``,`` or line end still belongs to the field; the record ends at the first line end outside quotes, or at
    the end of ``text``.  Returns ``(sizes, end)`` with ``end`` the offset just after the record's line end.
    Used only for a record csv refused, so a field is measured without being built.
    """
    n, pos, sizes = len(text), start, []
    while True:
        size = 0
        if pos < n and text[pos] == '"':
            pos += 1
            while True:
                quote = text.find('"', pos)
                if quote < 0:  # unterminated: the field runs to the end of the text
                    size, pos = size + n - pos, n
                    break
                size += quote - pos
                if text.startswith('"', quote + 1):
                    size, pos = size + 1, quote + 2
                    continue
                pos = quote + 1
                break
        stop = _UNQUOTED_END.search(text, pos)
        end = stop.start() if stop else n
        sizes.append(size + end - pos)
        if end == n:
            return sizes, n
        if text[end] == ",":
            pos = end + 1
            continue
        return sizes, end + (2 if text.startswith("\r\n", end) else 1)


def _too_large(sizes: list[int], limit: int, line: int, header: list[str] | None) -> str:
    """Detail of a record with a field over ``limit`` characters: line, 1-based field number, name, length."""
    number, size = next((i + 1, s) for i, s in enumerate(sizes) if s > limit)
    named = f" ({header[number - 1][:40]!r})" if header is not None and number <= len(header) else ""
    return f"line {line}: field {number}{named} has {size} characters, more than the limit of {limit}"


def _read_csv(name: str, data: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, undated)``: the required columns as text (empty ids -> None) + ``source_line``; the quarantine
    rows of records that cannot be trusted (``malformed_row``, ``field_too_large``), ``source_line`` set.

    Raises ``_FileProblem`` (``unreadable_file``/``missing_column``) for a file that gives nothing.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _FileProblem(
            "unreadable_file", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}: {exc.reason})"
        ) from exc
    stream = io.StringIO(text, newline="")
    reader = csv.reader(stream)
    skipped = 0  # lines passed over after records csv refused (not in reader.line_num)
    known = (1, 0)  # a line start, for _line_offset
    # csv refuses a field over its process-wide limit itself; a higher limit set elsewhere is checked here
    check = csv.field_size_limit() > MAX_CSV_FIELD and len(text) > MAX_CSV_FIELD
    header: list[str] | None = None
    records: list[list[str]] = []
    record_lines: list[int] = []
    bad_records: list[list[str]] = []
    bad_lines: list[int] = []
    large_lines: list[int] = []
    large_details: list[str] = []
    while True:
        start = reader.line_num + skipped + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            read = reader.line_num + skipped  # csv stopped inside the record, on this line
            begin = _line_offset(text, start, known)
            known = (start, begin)
            sizes, end = _field_sizes(text, begin)
            limit = csv.field_size_limit()
            if max(sizes) <= limit:
                raise _FileProblem("unreadable_file", f"CSV cannot be parsed near line {read}: {exc}") from exc
            if header is None:
                raise _FileProblem("unreadable_file", "header " + _too_large(sizes, limit, start, None)) from exc
            rest = max(_line_count(text, begin, end) - (read - start + 1), 0)
            for _ in range(rest):  # the next record starts after this one's end
                next(stream, None)
            skipped += rest
            large_lines.append(start)
            large_details.append(f"{name}: " + _too_large(sizes, limit, start, header))
            continue
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line
        if header is None:
            header = [h.strip() for h in record]
            continue
        if check and max(map(len, record)) > MAX_CSV_FIELD:
            large_lines.append(start)
            large_details.append(f"{name}: " + _too_large([len(f) for f in record], MAX_CSV_FIELD, start, header))
        elif len(record) == len(header):
            records.append(record)
            record_lines.append(start)
        else:
            bad_records.append(record)
            bad_lines.append(start)
    if header is None:
        return _text_frame([], [], {}), empty_quarantine()
    missing = [c for c in EVENT_COLUMNS if c not in header]
    if missing:
        shown = ", ".join(repr(h[:40]) for h in header[:12]) + (", ..." if len(header) > 12 else "")
        raise _FileProblem("missing_column", f"missing required column(s) {missing}; header has [{shown}]")
    index = {c: header.index(c) for c in EVENT_COLUMNS}
    rows = _text_frame(records, record_lines, index)
    malformed = empty_quarantine()
    if bad_records:
        padded = _text_frame(bad_records, bad_lines, index)
        detail = pd.Series(
            [f"{len(r)} fields, the header has {len(header)}" for r in bad_records], index=padded.index, dtype=object
        )
        malformed = quarantine_rows(padded, "malformed_row", detail)
    if large_lines:  # the record's fields are not kept: the detail says where it is and what is too large
        unread = _text_frame([[] for _ in large_lines], large_lines, {})
        large = quarantine_rows(unread, "field_too_large", pd.Series(large_details, index=unread.index, dtype=object))
        malformed = concat_quarantine([malformed, large])
    return rows, malformed


def _text_frame(records: list[list[str]], lines: list[int], index: dict[str, int]) -> pd.DataFrame:
    """Required columns as object text from positions ``index`` (short records give None)."""
    columns: dict[str, object] = {}
    for column in EVENT_COLUMNS:
        i = index.get(column)
        values = [r[i] if i is not None and i < len(r) else None for r in records]
        if column in ID_COLUMNS:
            values = [v if v else None for v in values]  # "" is null; other text verbatim
        elif column != "event_type":
            values = [v.strip() if v is not None else None for v in values]
        columns[column] = pd.Series(values, dtype=object)
    frame = pd.DataFrame(columns)
    frame["source_line"] = pd.Series(lines, dtype="int64")
    return frame


# ---------------------------------------------------------------------------------------------------------
# Parquet


def _read_parquet(data: bytes) -> pd.DataFrame:
    """The required columns cast to the schema's kinds + ``source_line`` (row index + 1)."""
    try:
        handle = pq.ParquetFile(io.BytesIO(data))
        names = handle.schema_arrow.names
        missing = [c for c in EVENT_COLUMNS if c not in names]
        if missing:
            raise _FileProblem("missing_column", f"missing required column(s) {missing}; has {names[:12]}")
        table = handle.read(columns=list(EVENT_COLUMNS))
    except _FileProblem:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError, IndexError) as exc:
        raise _FileProblem("unreadable_file", f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    columns = {c: _cast_column(c, table.column(c)).to_pandas() for c in EVENT_COLUMNS}
    frame = pd.DataFrame(columns)
    frame["source_line"] = np.arange(1, len(frame) + 1, dtype="int64")
    return frame


def _cast_column(column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Cast one Parquet column to what the schema needs, or raise ``_FileProblem(unreadable_file)``."""
    kind = values.type
    if pa.types.is_dictionary(kind):
        values = pa.chunked_array([c.dictionary_decode() for c in values.chunks], type=kind.value_type)
        kind = kind.value_type
    t = pa.types

    def fail() -> _FileProblem:
        return _FileProblem("unreadable_file", f"column {column!r} has type {kind}, which cannot be cast for {column}")

    try:
        if t.is_null(kind):
            return values
        if column in (*ID_COLUMNS, "event_type"):
            if t.is_string(kind) or t.is_large_string(kind):
                return values
            if t.is_integer(kind):
                return pc.cast(values, pa.string())
            raise fail()
        if column == "ts":
            if t.is_timestamp(kind):
                target = pa.timestamp("us", tz="UTC") if kind.tz is None else pa.timestamp("us", tz=kind.tz)
                return pc.cast(values, target)
            if t.is_date(kind):
                return pc.cast(pc.cast(values, pa.timestamp("us")), pa.timestamp("us", tz="UTC"))
            if t.is_string(kind) or t.is_large_string(kind):
                return values
            raise fail()
        # quantity, value
        if t.is_integer(kind) or t.is_floating(kind) or t.is_string(kind) or t.is_large_string(kind):
            return values
        if t.is_decimal(kind):
            return pc.cast(values, pa.float64())
        raise fail()
    except pa.ArrowException as exc:
        raise _FileProblem("unreadable_file", f"column {column!r} of type {kind} cannot be cast: {exc}") from exc


# ---------------------------------------------------------------------------------------------------------
# Timestamps


def _raw_text(value: object) -> str | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


# ---------------------------------------------------------------------------------------------------------
