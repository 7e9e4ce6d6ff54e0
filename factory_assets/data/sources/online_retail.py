"""UCI "Online Retail" / "Online Retail II" invoice lines as purchase and return events.

Dataset: "Online Retail", UCI Machine Learning Repository (dataset 352), donated by Dr Daqing Chen,
London South Bank University; D. Chen, S. L. Sain, K. Guo (2012), "Data mining for the online retail
industry: A case study of RFM model-based customer segmentation using data mining", Journal of Database
Marketing and Customer Strategy Management 19(3):197-208, doi:10.1057/dbm.2012.17.  "Online Retail II"
(UCI dataset 502) is the same retailer's 2009-2011 log.  Licence: Creative Commons Attribution 4.0
(CC BY 4.0): credit the paper and the UCI repository, and say what was changed.  This module changes the
data as follows: it maps lines to events, converts local UK time to UTC and leaves out (quarantines) the
lines listed below.

Input files (``.parquet`` or ``.csv``), one of two column layouts, detected by column names:

=================  ===============  ==============================================================
Online Retail      Online Retail II meaning
=================  ===============  ==============================================================
``InvoiceNo``      ``Invoice``      6-digit invoice; prefix ``C`` cancellation, ``A`` bad-debt adjustment
``StockCode``      ``StockCode``    product code (or a service code such as ``POST``)
``Quantity``       ``Quantity``     units; negative on cancellations and stock adjustments
``InvoiceDate``    ``InvoiceDate``  local UK wall time (Europe/London), text or naive datetime
``UnitPrice``      ``Price``        GBP per unit
``CustomerID``     ``Customer ID``  5-digit customer number, often stored as float (``17850.0``)
=================  ===============  ==============================================================

``Description`` and ``Country`` are not used and may be absent.

Mapping of one line (0-based row position ``line`` in its file):

* ``event_id`` = ``"{invoice}:{line}"`` (``"{file stem}:{invoice}:{line}"`` when the path is a directory
  with several files), stable across re-reads of an unchanged file;
* ``user_id`` = the customer number as an integer string (``"17850"``);
* ``item_id`` = ``StockCode`` stripped and upper-cased;
* ``ts`` = ``InvoiceDate`` localised from Europe/London and converted to UTC (GMT in winter, so UTC equals
  local time; BST in summer, so UTC is local time minus one hour);
* a normal line is a ``purchase`` with ``quantity`` and ``value = quantity * price`` (GBP);
* a line of a ``C`` invoice is a ``return`` with ``quantity = abs(Quantity)`` and
  ``value = abs(Quantity) * price``.

Quarantine reasons, checked in this order; a line is quarantined once, with the first reason that applies:

1. ``bad_timestamp``: ``InvoiceDate`` is missing or cannot be parsed (these lines have no day; see
   :meth:`OnlineRetailSource.undated_quarantine`);
2. ``ambiguous_local_time``: the local time falls in the autumn overlap or the spring gap of a
   daylight-saving change (filed under the UTC day the line would have had, which for UK changes at
   01:00 local is the local date);
3. ``missing_customer_id``: no customer number;
4. ``adjustment``: an ``A`` invoice (bad-debt adjustment);
5. ``non_product_stock_code``: a service code (:data:`SERVICE_STOCK_CODES` or a ``GIFT_0001_`` voucher);
6. ``negative_quantity``: a negative quantity on an invoice that is not a cancellation.

The remaining lines go through :func:`~factory_assets.data.sources.schema.validate_events` per day, which
quarantines e.g. zero quantities, empty ids and duplicate event ids.  Every line read ends up in exactly one
place: an accepted event of some day, the quarantine of some day, or the undated quarantine.

``DCGS*`` codes (eBay-channel listings such as party bags and dog collars) are products and are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from factory_assets.data.sources.base import DayBatch, EventSource, PermanentSourceError, TransientSourceError
from factory_assets.data.sources.schema import (
    EVENT_COLUMNS,
    QUARANTINE_COLUMNS,
    concat_quarantine,
    day_slices,
    empty_quarantine,
    quarantine_rows,
    validate_events,
)
from factory_assets.data.sources.validation import utc_microseconds

LOCAL_TZ = "Europe/London"

#: Non-product stock codes (postage, carriage, fees, discounts, manual entries, samples, bad debt ...).
SERVICE_STOCK_CODES: frozenset[str] = frozenset(
    {"POST", "DOT", "M", "C2", "D", "S", "B", "CRUK", "PADS", "AMAZONFEE", "BANK CHARGES"}
)
#: Stock-code prefixes that are gift vouchers, not products.
SERVICE_STOCK_PREFIXES: tuple[str, ...] = ("GIFT_0001_",)

#: Column roles -> column name, per layout.
LAYOUTS: dict[str, dict[str, str]] = {
    "Online Retail": {
        "invoice": "InvoiceNo",
        "stock_code": "StockCode",
        "quantity": "Quantity",
        "invoice_date": "InvoiceDate",
        "price": "UnitPrice",
        "customer": "CustomerID",
    },
    "Online Retail II": {
        "invoice": "Invoice",
        "stock_code": "StockCode",
        "quantity": "Quantity",
        "invoice_date": "InvoiceDate",
        "price": "Price",
        "customer": "Customer ID",
    },
}

_SUFFIXES = (".parquet", ".csv")
_DAY_US = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_OFFSET_RE = r"(?:Z|[+-]\d\d:?\d\d)$"


class OnlineRetailSource(EventSource):
    """Events from a UCI Online Retail (or Online Retail II) file, one UTC day at a time.

    Args:
        path: a ``.parquet`` or ``.csv`` file, or a directory; all ``.parquet``/``.csv`` files of a
            directory are read and concatenated in sorted file-name order.

    The constructor does no I/O.  The whole input is parsed once, on the first call that needs it (or on
    :meth:`load`), and cached both in the instance and in a module-level cache keyed by the resolved path,
    modification time and size of each file, so new instances for an unchanged file in the same process
    do not re-read it.

    Errors (raised by :meth:`load`, :meth:`fetch_day` and the other readers, never by the constructor):
        PermanentSourceError: the path does not exist, a directory holds no ``.parquet``/``.csv`` file, a
            file has an unsupported suffix or cannot be parsed, or a file fits neither column layout (the
            message names the file and the missing columns).
        TransientSourceError: an ``OSError`` while reading a file that exists (e.g. a flaky share).
    """

    name = "online_retail"
    #: Wholesale gift-ware: about 1,500 lines a day, so four weeks is a useful training window.
    window_days = 28

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._parsed: _Parsed | None = None

    # -- public API ------------------------------------------------------------------------------------

    def load(self) -> OnlineRetailSource:
        """Parse (or fetch from the cache) the whole input now; returns ``self``.  Raises as the class says."""
        self._get()
        return self

    def fetch_day(self, day: date) -> DayBatch:
        """The accepted events and the quarantined lines of one UTC day ``[00:00, 24:00)``.

        Returns:
            :class:`~factory_assets.data.sources.base.DayBatch` whose ``events`` have exactly
            :data:`~factory_assets.data.sources.schema.EVENT_COLUMNS` (``ts`` is ``datetime64[us, UTC]``,
            ``quantity`` ``int64`` units, ``value`` ``float64`` GBP), sorted by ``(ts, event_id)``, and whose
            ``quarantined`` has :data:`~factory_assets.data.sources.schema.QUARANTINE_COLUMNS` with
            ``source_file`` (file name) and ``source_line`` (1-based: row + 1 for Parquet, data row + 1
            for the header for CSV).  A day without data gives two empty frames.

        Raises:
            PermanentSourceError, TransientSourceError: as described on the class.
        """
        return self._get().fetch_day(day)

    def fetch_all(self) -> DayBatch:
        """Every accepted event and every quarantined line of the whole input, undated ones included.

        The events are validated without a day (same checks as :meth:`fetch_day` otherwise), so
        ``len(events) + len(quarantined)`` equals the number of lines read.  Shapes and errors as
        :meth:`fetch_day`.
        """
        return self._get().fetch_all()

    def undated_quarantine(self) -> pd.DataFrame:
        """Lines whose ``InvoiceDate`` is missing or unparseable (reason ``bad_timestamp``; no UTC day).

        Returns a copy with :data:`~factory_assets.data.sources.schema.QUARANTINE_COLUMNS`.
        """
        return self._get().undated.copy()

    def days(self) -> list[date]:
        """Sorted UTC days that have at least one event or quarantined line."""
        return self._get().days()

    @property
    def rows_read(self) -> int:
        """Number of lines read from all input files."""
        return self._get().rows_read

    def describe(self) -> dict[str, str]:
        """Small JSON-able description for asset metadata (no I/O)."""
        return {
            "source": self.name,
            "path": str(self.path),
            "window_days": str(self.window_days),
            "dataset": "UCI Online Retail (CC BY 4.0, Chen, Sain & Guo 2012)",
        }

    # -- internals -------------------------------------------------------------------------------------

    def _get(self) -> _Parsed:
        if self._parsed is None:
            files = _input_files(self.path)
            key = (str(self.path.resolve()), tuple(_file_key(f) for f in files))
            self._parsed = _cached_parse(key, files, multi=len(files) > 1)
        return self._parsed


def clear_cache() -> None:
    """Forget every parsed input held by the module-level cache (instances keep their own copy)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------------------------------------
# Parsed-input cache and per-day slicing


@dataclass
class _Parsed:
    candidates: pd.DataFrame  # event columns + source_file/source_line, sorted by UTC day
    cand_slices: dict[int, tuple[int, int]]  # day number -> [start, end) rows of candidates
    rejected: pd.DataFrame  # rows with a source reason (typed, with _reason/_detail), sorted by UTC day
    q_slices: dict[int, tuple[int, int]]
    undated: pd.DataFrame
    rows_read: int

    def fetch_day(self, day: date) -> DayBatch:
        n = day.toordinal() - _EPOCH_ORDINAL
        a, b = self.cand_slices.get(n, (0, 0))
        events, invalid = validate_events(self.candidates.iloc[a:b], day)
        qa, qb = self.q_slices.get(n, (0, 0))
        rejected = _quarantine_of(self.rejected.iloc[qa:qb])
        return DayBatch(events=events, quarantined=concat_quarantine([rejected, invalid]))

    def fetch_all(self) -> DayBatch:
        events, invalid = validate_events(self.candidates, None)
        rejected = _quarantine_of(self.rejected)
        return DayBatch(events=events, quarantined=concat_quarantine([rejected, self.undated, invalid]))

    def days(self) -> list[date]:
        numbers = sorted(set(self.cand_slices) | set(self.q_slices))
        return [date.fromordinal(n + _EPOCH_ORDINAL) for n in numbers]


_CACHE: OrderedDict[tuple, _Parsed] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _cached_parse(key: tuple, files: list[Path], multi: bool) -> _Parsed:
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        parsed = _parse(files, multi)
        _CACHE[key] = parsed
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return parsed


def _input_files(path: Path) -> list[Path]:
    if not path.exists():
        raise PermanentSourceError(f"Online Retail input {str(path)!r} does not exist")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES),
                       key=lambda p: p.name)
        if not files:
            raise PermanentSourceError(f"Online Retail directory {str(path)!r} holds no .parquet or .csv file")
        return files
    if path.suffix.lower() not in _SUFFIXES:
        raise PermanentSourceError(f"Online Retail input {str(path)!r} is not a .parquet or .csv file")
    return [path]


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (path.name, st.st_mtime_ns, st.st_size)


def _parse(files: list[Path], multi: bool) -> _Parsed:
    mapped = [_map_file(f, prefix=f"{f.stem}:" if multi else "") for f in files]
    frame = pd.concat(mapped, ignore_index=True) if len(mapped) > 1 else mapped[0]
    rows_read = len(frame)

    undated_mask = frame["_reason"].to_numpy() == "bad_timestamp"
    undated = _quarantine_of(frame[undated_mask])

    dated = frame[~undated_mask]
    order = np.argsort(dated["_day"].to_numpy(), kind="stable")
    dated = dated.iloc[order]
    is_candidate = dated["_reason"].isna().to_numpy()

    cand = dated[is_candidate]
    candidates = cand.loc[:, [*EVENT_COLUMNS, "source_file", "source_line"]].reset_index(drop=True)
    rejected = dated[~is_candidate].reset_index(drop=True)  # turned into quarantine rows per fetched day
    return _Parsed(
        candidates=candidates,
        cand_slices=day_slices(cand["_day"].to_numpy()),
        rejected=rejected,
        q_slices=day_slices(rejected["_day"].to_numpy()),
        undated=undated,
        rows_read=rows_read,
    )


def _quarantine_of(rows: pd.DataFrame) -> pd.DataFrame:
    """Quarantine rows, one block per reason, re-sorted into the input order of ``rows``."""
    if rows.empty:
        return empty_quarantine()
    position = pd.Series(np.arange(len(rows)), index=rows.index)
    parts, orders = [], []
    for reason, group in rows.groupby("_reason", sort=False):
        parts.append(quarantine_rows(group, str(reason), group["_detail"]))
        orders.append(position[group.index].to_numpy())
    out = pd.concat(parts, ignore_index=True)
    out = out.iloc[np.argsort(np.concatenate(orders), kind="stable")].reset_index(drop=True)
    return out.loc[:, list(QUARANTINE_COLUMNS)]




# ---------------------------------------------------------------------------------------------------------
# Reading and mapping one file


def _read(path: Path) -> tuple[pd.DataFrame, int]:
    """The raw table and the offset from 0-based row position to 1-based source line."""
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path), 1
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
        except UnicodeDecodeError:  # Excel exports of the UCI files are often Latin-1 / cp1252
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="latin-1")
        return raw, 2
    except FileNotFoundError as exc:
        raise TransientSourceError(f"Online Retail file {str(path)!r} vanished while reading: {exc}") from exc
    except PermissionError as exc:
        raise PermanentSourceError(f"Online Retail file {str(path)!r} is not readable: {exc}") from exc
    except OSError as exc:
        if type(exc) is OSError or isinstance(exc, (TimeoutError, ConnectionError, InterruptedError)):
            raise TransientSourceError(f"reading Online Retail file {str(path)!r} failed: {exc}") from exc
        raise PermanentSourceError(f"Online Retail file {str(path)!r} cannot be parsed: {exc}") from exc
    except Exception as exc:  # parser errors of pyarrow / pandas: the file itself is bad
        raise PermanentSourceError(f"Online Retail file {str(path)!r} cannot be parsed: {exc}") from exc


def _detect_layout(path: Path, columns: list[str]) -> dict[str, str]:
    present = set(columns)
    missing = {name: [c for c in cols.values() if c not in present] for name, cols in LAYOUTS.items()}
    for name, miss in missing.items():
        if not miss:
            return LAYOUTS[name]
    detail = "; ".join(f"for {name} missing {miss}" for name, miss in missing.items())
    raise PermanentSourceError(
        f"Online Retail file {str(path)!r} fits no known column layout ({detail}); got columns {columns}"
    )


def _map_file(path: Path, prefix: str) -> pd.DataFrame:
    """One row per input line: event columns, source_file/line, UTC day number, first reason and detail."""
    raw, line_offset = _read(path)
    raw = raw.reset_index(drop=True)
    raw.columns = [str(c).strip() for c in raw.columns]
    cols = _detect_layout(path, list(raw.columns))
    n = len(raw)
    position = np.arange(n)

    invoice = _text(raw[cols["invoice"]], upper=True)
    stock = _text(raw[cols["stock_code"]], upper=True)
    customer = _text(raw[cols["customer"]], integral=True)
    quantity = pd.to_numeric(raw[cols["quantity"]], errors="coerce").to_numpy(dtype="float64")
    price = pd.to_numeric(raw[cols["price"]], errors="coerce").to_numpy(dtype="float64")
    ts, unparseable, ambiguous, fallback_day = _utc_times(raw[cols["invoice_date"]])

    inv_first = pd.Series(invoice, dtype=object).str[:1].to_numpy()
    is_cancel = inv_first == "C"
    is_adjust = inv_first == "A"
    abs_q = np.abs(quantity)
    out_q = np.where(is_cancel, abs_q, quantity)
    if np.isnan(out_q).any() or (out_q != np.floor(out_q)).any():
        q_column = pd.Series(out_q, dtype="float64")  # validate_events rejects NaN / fractional quantities
    else:
        q_column = pd.Series(out_q.astype("int64"))

    event_id = np.array(
        [None if inv is None else f"{prefix}{inv}:{i}" for i, inv in enumerate(invoice.tolist())], dtype=object
    )

    day = np.where(unparseable, -1, _day_numbers(ts))
    day = np.where(ambiguous, fallback_day, day)

    frame = pd.DataFrame(
        {
            "event_id": event_id,
            "user_id": customer,
            "item_id": stock,
            "event_type": np.array(["purchase", "return"], dtype=object)[is_cancel.astype(np.intp)],
            "ts": ts,
            "quantity": q_column,
            "value": out_q * price,
            "source_file": path.name,
            "source_line": position + line_offset,
            "_day": day.astype("int64"),
        }
    )

    date_col, cust_col, inv_col, q_col = cols["invoice_date"], cols["customer"], cols["invoice"], cols["quantity"]
    is_service = _is_service_code(stock)
    # (mask, reason, detail for the hit rows) in the documented order; details are built for hits only
    rules: list[tuple[np.ndarray, str, object]] = [
        (unparseable, "bad_timestamp",
         lambda hit: f"{date_col}=" + _raw_text(raw[date_col], hit) + " cannot be parsed"),
        (ambiguous, "ambiguous_local_time",
         lambda hit: f"{date_col}=" + _raw_text(raw[date_col], hit)
         + f" is ambiguous or does not exist in {LOCAL_TZ} (daylight-saving change)"),
        (np.array([c is None for c in customer], dtype=bool), "missing_customer_id",
         lambda hit: f"{cust_col} is empty"),
        (is_adjust, "adjustment",
         lambda hit: f"{inv_col}=" + _raw_text(raw[inv_col], hit) + " is a bad-debt adjustment"),
        (is_service, "non_product_stock_code",
         lambda hit: "StockCode=" + pd.Series(stock[hit], dtype=object) + " is a service code, not a product"),
        (~is_cancel & (quantity < 0), "negative_quantity",
         lambda hit: f"{q_col}=" + _raw_text(raw[q_col], hit) + " on non-cancellation invoice "
         + _raw_text(raw[inv_col], hit)),
    ]
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    open_ = np.ones(n, dtype=bool)
    for mask, code, describe in rules:
        hit = open_ & mask
        if hit.any():
            reason[hit] = code
            text = describe(hit)
            detail[hit] = text.to_numpy(dtype=object) if isinstance(text, pd.Series) else text
            open_ &= ~hit
    frame["_reason"] = reason
    frame["_detail"] = detail
    return frame


def _raw_text(values: pd.Series, hit: np.ndarray) -> pd.Series:
    """The raw cells of ``hit`` rows as text (``<null>`` for missing), default index."""
    return pd.Series(_text(values[hit].astype(object)), dtype=object).fillna("<null>")


def _is_service_code(stock: np.ndarray) -> np.ndarray:
    codes, uniques = pd.factorize(pd.Series(stock, dtype=object), use_na_sentinel=True)
    flags = np.array(
        [u in SERVICE_STOCK_CODES or u.startswith(SERVICE_STOCK_PREFIXES) for u in uniques] + [False], dtype=bool
    )
    return flags[codes]


def _text(values: pd.Series, upper: bool = False, integral: bool = False) -> np.ndarray:
    """Object array of stripped strings (``None`` for missing/empty), computed once per distinct value.

    With ``integral``, numbers with an integral value (``17850.0``, ``"17850.0"``) become ``"17850"``.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)

    def one(v: object) -> str | None:
        if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        s = str(v).strip()
        if integral and s:
            try:
                f = float(s)
                if np.isfinite(f) and f.is_integer():
                    s = str(int(f))
            except ValueError:
                pass
        if upper:
            s = s.upper()
        return s or None

    mapped = np.array([one(u) for u in uniques] + [None], dtype=object)
    return mapped[codes]


def _utc_times(values: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray, np.ndarray]:
    """Local Europe/London wall times -> (UTC ``datetime64[us, UTC]``, unparseable, ambiguous, fallback day).

    Accepts tz-aware datetimes (converted directly), naive datetimes and text (read as local time),
    text in ISO form (``YYYY-MM-DD HH:MM[:SS]``) or US form (``M/D/YYYY H:MM``, as in common CSV exports);
    text with an explicit offset or ``Z`` is taken at that offset.  Ambiguous/non-existent local times give
    NaT with ``ambiguous`` set and ``fallback day`` = the UTC day they would have if read as summer time.
    """
    n = len(values)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        ts = values.dt.tz_convert("UTC").astype("datetime64[us, UTC]").reset_index(drop=True)
        return ts, ts.isna().to_numpy(), np.zeros(n, dtype=bool), np.zeros(n, dtype="int64")

    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    uniq = pd.Series(uniques, dtype=values.dtype if pd.api.types.is_datetime64_dtype(values.dtype) else object)
    utc = pd.Series(pd.NaT, index=uniq.index, dtype="datetime64[us, UTC]")
    if pd.api.types.is_datetime64_dtype(uniq.dtype):
        naive = uniq.astype("datetime64[us]")
    else:
        naive = pd.Series(pd.NaT, index=uniq.index, dtype="datetime64[us]")
        is_str = uniq.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        text = uniq[is_str].str.strip()
        with_offset = text.str.contains(_OFFSET_RE, regex=True)
        aware_text = text[with_offset]
        if len(aware_text):  # the sources' one ISO-8601 parser (validation.utc_microseconds)
            us, _ = utc_microseconds(aware_text)
            utc[aware_text.index] = pd.Series(us.view("datetime64[us]"), index=aware_text.index).dt.tz_localize("UTC")
        plain = text[~with_offset]
        parsed = pd.to_datetime(plain, errors="coerce", format="ISO8601")
        for fmt in ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S"):
            retry = parsed.isna() & plain.ne("")
            if retry.any():
                parsed[retry] = pd.to_datetime(plain[retry], errors="coerce", format=fmt)
        naive[plain.index] = parsed.astype("datetime64[us]")
        for i, v in uniq[~is_str].items():  # datetime objects in an object column
            if isinstance(v, datetime):
                stamp = pd.Timestamp(v)
                if stamp.tzinfo is not None:
                    utc[i] = stamp.tz_convert("UTC")
                else:
                    naive[i] = stamp

    local = naive.dt.tz_localize(LOCAL_TZ, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    has_naive = naive.notna()
    utc[has_naive] = local[has_naive].astype("datetime64[us, UTC]")
    amb = (has_naive & local.isna()).to_numpy()
    fallback = np.zeros(len(uniq), dtype="int64")
    if amb.any():
        summer = naive[amb].dt.tz_localize(
            LOCAL_TZ, ambiguous=np.ones(int(amb.sum()), dtype=bool), nonexistent="shift_forward"
        )
        fallback[amb] = _day_numbers(summer.dt.tz_convert("UTC"))
    bad = (utc.isna().to_numpy() & ~amb)

    ts = pd.Series(utc.array.take(codes, allow_fill=True), dtype="datetime64[us, UTC]")
    unparseable = np.append(bad, True)[codes]
    ambiguous = np.append(amb, False)[codes]
    fallback_day = np.append(fallback, 0)[codes]
    return ts, unparseable, ambiguous, fallback_day


def _day_numbers(ts: pd.Series) -> np.ndarray:
    """Days since 1970-01-01 of UTC timestamps (garbage for NaT; mask those)."""
    us = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]").view("int64")
    return np.floor_divide(us, _DAY_US)
