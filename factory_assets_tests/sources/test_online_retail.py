"""OnlineRetailSource: crafted rows in both layouts and both file formats, time zones, and the real UCI file."""

from __future__ import annotations

import os
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from factory_assets.data.sources import online_retail
from factory_assets.data.sources.base import PermanentSourceError
from factory_assets.data.sources.online_retail import OnlineRetailSource
from factory_assets.data.sources.schema import EVENT_COLUMNS, QUARANTINE_COLUMNS, REASONS

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
REAL_FILE = DATA / "online-retail" / "online_retail.parquet"
NAN = float("nan")

# Online Retail (I) layout.  Row position -> what it tests (worked out by hand below).
ROWS = [
    # InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country
    ("536365", "85123a", "WHITE HANGING HEART", 6, "2010-12-01 08:26:00", 2.55, 17850.0, "United Kingdom"),  # 0
    ("C536383", "35004C", "SET OF 3 TINS", -1, "2010-12-01 09:49:00", 4.65, 15311.0, "United Kingdom"),  # 1
    ("536414", "22139", "RETROSPOT TEA SET", 56, "2010-12-01 11:52:00", 0.0, NAN, "United Kingdom"),  # 2
    ("A563185", "B", "Adjust bad debt", 1, "2011-08-12 14:50:00", -11062.06, 12346.0, "United Kingdom"),  # 3
    ("536370", "POST", "POSTAGE", 3, "2010-12-01 08:45:00", 18.0, 12583.0, "France"),  # 4
    ("536589", "21777", "RECIPE BOX", -10, "2010-12-01 16:50:00", 0.0, 17850.0, "United Kingdom"),  # 5
    ("555156", " 23299 ", "FOOD COVER", 6, "2011-06-01 07:37:00", 3.75, 15643.0, "United Kingdom"),  # 6
    ("555200", "22423", "REGENCY CAKESTAND", 2, "2011-06-02 00:30:00", 12.75, 15643.0, "United Kingdom"),  # 7
    ("573000", "22086", "PAPER CHAIN KIT", 1, "2011-10-30 01:30:00", 2.95, 14911.0, "EIRE"),  # 8
    ("536999", "22222", "CAKE FORKS", 1, "not a date", 1.0, 14911.0, "EIRE"),  # 9
    ("A563186", "B", "Adjust bad debt", 1, "2011-08-12 14:51:00", -11062.06, NAN, "United Kingdom"),  # 10
    ("536998", "gift_0001_20", "Gift Voucher", 1, "2010-12-01 10:00:00", 17.02, 14911.0, "EIRE"),  # 11
    ("537000", "22333", "RIBBON", 1, "2011-03-27 01:30:00", 0.85, 14911.0, "EIRE"),  # 12
    ("536366", "22633", "HAND WARMER", 0, "2010-12-01 08:28:00", 1.85, 17850.0, "United Kingdom"),  # 13
]
LAYOUT_I = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
LAYOUT_II = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]


def utc(*args: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=timezone.utc))


# Expected accepted events per UTC day, by hand.
EXPECTED_EVENTS = {
    date(2010, 12, 1): [
        # 2010-12-01 is GMT: UTC equals local time.
        ("536365:0", "17850", "85123A", "purchase", utc(2010, 12, 1, 8, 26), 6, 6 * 2.55),
        ("C536383:1", "15311", "35004C", "return", utc(2010, 12, 1, 9, 49), 1, 4.65),
    ],
    date(2011, 6, 1): [
        # BST: UTC = local - 1 h.  07:37 local -> 06:37 UTC; 00:30 local on 06-02 -> 23:30 UTC on 06-01.
        ("555156:6", "15643", "23299", "purchase", utc(2011, 6, 1, 6, 37), 6, 6 * 3.75),
        ("555200:7", "15643", "22423", "purchase", utc(2011, 6, 1, 23, 30), 2, 2 * 12.75),
    ],
}
# Expected quarantine per UTC day: (row position, reason).  source_line = position + 1 (Parquet) / + 2 (CSV).
EXPECTED_QUARANTINE = {
    date(2010, 12, 1): [
        (2, "missing_customer_id"),
        (4, "non_product_stock_code"),
        (5, "negative_quantity"),
        (11, "non_product_stock_code"),
        (13, "bad_quantity"),  # from validate_events, merged into the day's quarantine
    ],
    date(2011, 8, 12): [(3, "adjustment"), (10, "missing_customer_id")],  # no customer wins over 'A'
    date(2011, 10, 30): [(8, "ambiguous_local_time")],  # 01:30 occurs twice (BST -> GMT)
    date(2011, 3, 27): [(12, "ambiguous_local_time")],  # 01:30 does not exist (GMT -> BST)
}


def write_crafted(tmp_path: Path, layout: str, fmt: str, name: str = "retail") -> Path:
    frame = pd.DataFrame(ROWS, columns=LAYOUT_I if layout == "I" else LAYOUT_II)
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        if layout == "II":  # Online Retail II conversions often hold a real (naive) datetime column
            frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"], errors="coerce")
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("layout", ["I", "II"])
def test_crafted_rows_map_to_exact_events_and_quarantine(tmp_path: Path, layout: str, fmt: str) -> None:
    path = write_crafted(tmp_path, layout, fmt)
    source = OnlineRetailSource(path)
    line_offset = 2 if fmt == "csv" else 1
    seen = 0
    for day in sorted(set(EXPECTED_EVENTS) | set(EXPECTED_QUARANTINE) | {date(2011, 6, 2)}):
        batch = source.fetch_day(day)
        assert list(batch.events.columns) == list(EVENT_COLUMNS)
        assert str(batch.events["ts"].dtype) == "datetime64[us, UTC]"
        assert batch.events["quantity"].dtype == "int64"
        got = list(batch.events.itertuples(index=False, name=None))
        want = EXPECTED_EVENTS.get(day, [])
        assert [g[:6] for g in got] == [w[:6] for w in want], day
        assert [g[6] for g in got] == pytest.approx([w[6] for w in want])

        q = batch.quarantined
        assert list(q.columns) == list(QUARANTINE_COLUMNS)
        got_q = sorted(zip(q["source_line"].tolist(), q["reason"].tolist()))
        want_q = [(pos + line_offset, reason) for pos, reason in EXPECTED_QUARANTINE.get(day, [])]
        assert got_q == want_q, day
        assert set(q["source_file"]) <= {path.name}
        assert q["detail"].notna().all()
        seen += len(batch.events) + len(q)

    undated = source.undated_quarantine()
    assert undated["reason"].tolist() == ["bad_timestamp"]
    assert undated["source_line"].tolist() == [9 + line_offset]
    assert undated["source_file"].tolist() == [path.name]
    seen += len(undated)
    assert seen == len(ROWS) == source.rows_read  # nothing silently dropped

    everything = source.fetch_all()
    assert len(everything.events) + len(everything.quarantined) == len(ROWS)
    assert set(everything.quarantined["reason"]) <= set(REASONS)


def test_day_whose_only_line_fails_validation(tmp_path: Path) -> None:
    frame = pd.DataFrame([ROWS[13]], columns=LAYOUT_I)  # quantity 0, alone on its day
    path = tmp_path / "zero.parquet"
    frame.to_parquet(path, index=False)
    batch = OnlineRetailSource(path).fetch_day(date(2010, 12, 1))
    assert batch.events.empty and list(batch.events.columns) == list(EVENT_COLUMNS)
    assert batch.quarantined[["reason", "source_line"]].values.tolist() == [["bad_quantity", 1]]


def test_quarantined_row_carries_mapped_fields(tmp_path: Path) -> None:
    source = OnlineRetailSource(write_crafted(tmp_path, "I", "parquet"))
    q = source.fetch_day(date(2010, 12, 1)).quarantined.set_index("source_line")
    post = q.loc[5]
    assert (post["event_id"], post["user_id"], post["item_id"], post["reason"]) == (
        "536370:4", "12583", "POST", "non_product_stock_code")
    assert "POST" in post["detail"]
    assert q.loc[3, "user_id"] is None and q.loc[3, "reason"] == "missing_customer_id"
    assert q.loc[12, "item_id"] == "GIFT_0001_20"
    assert q.loc[6, "quantity"] == "-10"  # a stock adjustment keeps its raw sign in the quarantine


def test_timezone_aware_datetimes_are_converted_not_localised(tmp_path: Path) -> None:
    frame = pd.DataFrame(ROWS[:2], columns=LAYOUT_II)
    frame["InvoiceDate"] = pd.to_datetime(["2011-06-01 07:37:00+01:00", "2011-06-01 23:30:00+00:00"], utc=True)
    path = tmp_path / "aware.parquet"
    frame.to_parquet(path, index=False)
    events = OnlineRetailSource(path).fetch_day(date(2011, 6, 1)).events
    assert events["ts"].tolist() == [utc(2011, 6, 1, 6, 37), utc(2011, 6, 1, 23, 30)]


def test_us_style_csv_dates_are_read(tmp_path: Path) -> None:
    frame = pd.DataFrame(ROWS[:1], columns=LAYOUT_I)
    frame["InvoiceDate"] = ["7/1/2011 8:26"]  # 1 July 2011, as in the common Kaggle CSV export (BST)
    path = tmp_path / "kaggle.csv"
    frame.to_csv(path, index=False)
    events = OnlineRetailSource(path).fetch_day(date(2011, 7, 1)).events
    assert events["ts"].tolist() == [utc(2011, 7, 1, 7, 26)]


def test_directory_reads_files_in_name_order_with_stem_prefixed_ids(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    write_crafted(folder, "II", "csv", name="b_2011")
    write_crafted(folder, "I", "parquet", name="a_2010")
    (folder / "notes.txt").write_text("ignored")
    source = OnlineRetailSource(folder)
    assert source.rows_read == 2 * len(ROWS)
    events = source.fetch_day(date(2010, 12, 1)).events
    assert events["event_id"].tolist() == ["a_2010:536365:0", "b_2011:536365:0", "a_2010:C536383:1",
                                           "b_2011:C536383:1"]
    q = source.fetch_day(date(2011, 10, 30)).quarantined
    assert sorted(zip(q["source_file"], q["source_line"])) == [("a_2010.parquet", 9), ("b_2011.csv", 10)]
    everything = source.fetch_all()
    assert len(everything.events) + len(everything.quarantined) == 2 * len(ROWS)


def test_missing_path_and_empty_directory_raise_permanent(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    source = OnlineRetailSource(missing)  # no I/O in the constructor
    with pytest.raises(PermanentSourceError, match="nope.parquet"):
        source.fetch_day(date(2011, 1, 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PermanentSourceError, match="empty"):
        OnlineRetailSource(tmp_path / "empty").load()
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(PermanentSourceError, match="x.json"):
        OnlineRetailSource(tmp_path / "x.json").load()


def test_unknown_layout_names_file_and_missing_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(ROWS[:1], columns=LAYOUT_I).drop(columns=["UnitPrice", "CustomerID"])
    path = tmp_path / "odd.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(PermanentSourceError) as info:
        OnlineRetailSource(path).load()
    message = str(info.value)
    assert "odd.csv" in message
    for column in ("UnitPrice", "CustomerID", "Price", "Customer ID"):
        assert repr(column) in message


def test_corrupt_parquet_is_permanent(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(PermanentSourceError, match="broken.parquet"):
        OnlineRetailSource(path).load()


def test_module_cache_shared_by_instances_and_invalidated_by_change(tmp_path: Path, monkeypatch) -> None:
    path = write_crafted(tmp_path, "I", "csv")
    reads = []
    real_read = online_retail._read
    monkeypatch.setattr(online_retail, "_read", lambda p: reads.append(p) or real_read(p))
    first = OnlineRetailSource(path)
    first.fetch_day(date(2010, 12, 1))
    first.fetch_day(date(2011, 6, 1))
    OnlineRetailSource(str(path)).fetch_day(date(2010, 12, 1))
    assert len(reads) == 1
    # A rewritten file (new size and mtime) is read again.
    pd.DataFrame(ROWS[:3], columns=LAYOUT_I).to_csv(path, index=False)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fresh = OnlineRetailSource(path)
    assert fresh.rows_read == 3
    assert len(reads) == 2
    assert first.rows_read == len(ROWS)  # the old instance keeps its own parse


def test_fetch_day_is_deterministic_and_returns_copies(tmp_path: Path) -> None:
    source = OnlineRetailSource(write_crafted(tmp_path, "I", "parquet"))
    a = source.fetch_day(date(2010, 12, 1))
    a.events.loc[0, "user_id"] = "tampered"
    b = source.fetch_day(date(2010, 12, 1))
    assert b.events["user_id"].tolist() == ["17850", "15311"]
    pd.testing.assert_frame_equal(source.fetch_day(date(2010, 12, 1)).quarantined, b.quarantined)


# ---------------------------------------------------------------------------------------------------------
# The real UCI file

SERVICE_CODES = {"POST", "DOT", "M", "C2", "D", "S", "B", "CRUK", "PADS", "AMAZONFEE", "BANK CHARGES"}


@pytest.fixture(scope="module")
def real():
    if not REAL_FILE.is_file():
        pytest.skip(f"real Online Retail data not found at {REAL_FILE.resolve()} (shared data folder absent)")
    online_retail.clear_cache()
    start = time.perf_counter()
    source = OnlineRetailSource(REAL_FILE).load()
    parse_s = time.perf_counter() - start
    raw = pd.read_parquet(REAL_FILE)
    return source, raw, parse_s


@pytest.fixture(scope="module")
def real_all(real):
    return real[0].fetch_all()


def _independent_expectation(raw: pd.DataFrame) -> dict[str, int]:
    """Plain-pandas counts, written without the module's helpers."""
    code = raw["StockCode"].astype(str).str.strip().str.upper()
    service = code.isin(SERVICE_CODES) | code.str.startswith("GIFT_0001_")
    invoice = raw["InvoiceNo"].astype(str).str.strip().str.upper()
    cancel = invoice.str.startswith("C")
    has_customer = raw["CustomerID"].notna()
    usable = has_customer & (raw["Quantity"] > 0) & ~cancel
    assert int(usable.sum()) == 397_924  # the README's figure for usable purchase lines
    return {
        "purchase": int((usable & ~service).sum()),
        "return": int((has_customer & cancel & ~service).sum()),
        "missing_customer_id": int((~has_customer).sum()),
        "adjustment": int((has_customer & invoice.str.startswith("A")).sum()),
        "non_product_stock_code": int((has_customer & ~invoice.str.startswith("A") & service).sum()),
        "negative_quantity": int((has_customer & ~cancel & (raw["Quantity"] < 0) & ~service).sum()),
    }


def test_real_file_accounts_for_every_row(real, real_all) -> None:
    source, raw, _ = real
    assert len(raw) == source.rows_read == 541_909
    assert len(real_all.events) + len(real_all.quarantined) == 541_909
    assert source.undated_quarantine().empty


def test_real_file_event_and_reason_counts(real, real_all) -> None:
    _, raw, _ = real
    expected = _independent_expectation(raw)
    types = real_all.events["event_type"].value_counts().to_dict()
    assert types == {"purchase": expected["purchase"], "return": expected["return"]}
    assert expected["purchase"] == 397_924 - 1_554  # service-code purchase lines with a customer
    reasons = real_all.quarantined["reason"].value_counts().to_dict()
    want = {k: v for k, v in expected.items() if k not in ("purchase", "return") and v}
    assert reasons == want
    assert real_all.events["user_id"].str.fullmatch(r"\d{5}").all()
    assert (real_all.events["quantity"] > 0).all()
    assert real_all.events["event_id"].is_unique


def test_real_file_days_slice_exactly(real, real_all) -> None:
    source, _, _ = real
    days = source.days()
    assert days[0] == date(2010, 12, 1) and days[-1] == date(2011, 12, 9)
    sample = [date(2010, 12, 1), date(2011, 3, 27), date(2011, 6, 1), date(2011, 10, 30), date(2011, 10, 31),
              date(2011, 12, 9)]
    all_ts = real_all.events["ts"]
    for day in sample:
        start = pd.Timestamp(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
        end = start + timedelta(days=1)
        batch = source.fetch_day(day)
        assert ((batch.events["ts"] >= start) & (batch.events["ts"] < end)).all()
        assert len(batch.events) == int(((all_ts >= start) & (all_ts < end)).sum())
        assert batch.quarantined["source_line"].notna().all()
        assert (batch.quarantined["source_file"] == "online_retail.parquet").all()
    # Summer: the first invoice of 2011-06-01 is at 07:37 local (BST), stored at 06:37 UTC.
    assert source.fetch_day(date(2011, 6, 1)).events["ts"].iloc[0] == utc(2011, 6, 1, 6, 37)


def test_real_file_is_cached_and_fetch_is_fast(real) -> None:
    source, _, parse_s = real
    start = time.perf_counter()
    again = OnlineRetailSource(REAL_FILE)
    batch = again.fetch_day(date(2011, 11, 17))
    elapsed = time.perf_counter() - start
    assert again._parsed is source._parsed  # no re-read
    assert len(batch.events) > 0
    assert elapsed < 1.0, f"cached fetch_day took {elapsed:.3f}s (first parse {parse_s:.2f}s)"
    assert np.isfinite(batch.events["value"]).all()
