"""MovieLensSource: crafted ratings, UTC day boundaries, errors, caching, and the real ml-latest-small file."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from factory_assets.data.sources import movielens
from factory_assets.data.sources.base import PermanentSourceError
from factory_assets.data.sources.movielens import MovieLensSource
from factory_assets.data.sources.schema import EVENT_COLUMNS, QUARANTINE_COLUMNS

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
REAL_DIR = DATA / "movielens-latest-small"

CRAFTED = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,3,4.5,946684799
2,50,0.5,946684800
2,51,3.0,
3,52,5.0,soon
3,53,2.0,946771199
"""


def utc(*args: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=timezone.utc))


@pytest.fixture()
def crafted(tmp_path: Path) -> Path:
    path = tmp_path / "ratings.csv"
    path.write_text(CRAFTED)
    return path


def test_crafted_ratings_by_hand(crafted: Path) -> None:
    source = MovieLensSource(crafted.parent)  # the directory holding ratings.csv
    # 964982703 s = 2000-07-30 18:45:03 UTC
    e = source.fetch_day(date(2000, 7, 30)).events
    assert list(e.columns) == list(EVENT_COLUMNS)
    assert list(e.itertuples(index=False, name=None)) == [
        ("ml:0", "1", "1", "rating", utc(2000, 7, 30, 18, 45, 3), 1, 4.0)
    ]
    assert str(e["ts"].dtype) == "datetime64[us, UTC]" and e["quantity"].dtype == "int64"
    # 946684799 s = 1999-12-31 23:59:59 UTC: the last second of 1999-12-31, not of 2000-01-01.
    assert source.fetch_day(date(1999, 12, 31)).events["event_id"].tolist() == ["ml:1"]
    jan1 = source.fetch_day(date(2000, 1, 1)).events
    assert jan1["event_id"].tolist() == ["ml:2", "ml:5"]  # 00:00:00 and 23:59:59 of 2000-01-01
    assert jan1["value"].tolist() == [0.5, 2.0]
    assert source.fetch_day(date(2000, 1, 2)).events.empty

    undated = source.undated_quarantine()
    assert list(undated.columns) == list(QUARANTINE_COLUMNS)
    assert sorted(zip(undated["source_line"], undated["reason"])) == [(5, "bad_timestamp"), (6, "bad_timestamp")]
    assert set(undated["source_file"]) == {"ratings.csv"}
    assert source.rows_read == 6
    everything = source.fetch_all()
    assert len(everything.events) + len(everything.quarantined) == 6
    assert source.days() == [date(1999, 12, 31), date(2000, 1, 1), date(2000, 7, 30)]


def test_bad_rating_is_quarantined_by_validation(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n7,8,,964982703\n,9,3.0,964982704\n")
    batch = MovieLensSource(path).fetch_day(date(2000, 7, 30))
    assert batch.events.empty
    assert sorted(zip(batch.quarantined["source_line"], batch.quarantined["reason"])) == [
        (2, "bad_value"), (3, "missing_id")]


def test_errors_are_permanent_and_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(PermanentSourceError, match="nowhere"):
        MovieLensSource(tmp_path / "nowhere").fetch_day(date(2000, 1, 1))
    with pytest.raises(PermanentSourceError, match="ratings.csv"):
        MovieLensSource(tmp_path).load()  # a directory without ratings.csv
    bad = tmp_path / "other.csv"
    bad.write_text("user,movieId,stars,timestamp\n1,2,3.0,4\n")
    with pytest.raises(PermanentSourceError) as info:
        MovieLensSource(bad).load()
    message = str(info.value)
    assert "other.csv" in message and "'userId'" in message and "'rating'" in message


def test_instances_share_the_module_cache(crafted: Path, monkeypatch) -> None:
    reads = []
    real_read = movielens._read
    monkeypatch.setattr(movielens, "_read", lambda p: reads.append(p) or real_read(p))
    MovieLensSource(crafted).fetch_day(date(2000, 1, 1))
    MovieLensSource(crafted.parent).fetch_day(date(2000, 7, 30))  # same resolved file
    assert len(reads) == 1


def test_window_is_a_year() -> None:
    assert MovieLensSource.window_days == 365 and MovieLensSource.name == "movielens"


@pytest.fixture(scope="module")
def real() -> MovieLensSource:
    if not (REAL_DIR / "ratings.csv").is_file():
        pytest.skip(f"real MovieLens data not found at {REAL_DIR.resolve()} (shared data folder absent)")
    return MovieLensSource(REAL_DIR).load()


@pytest.fixture(scope="module")
def real_all(real: MovieLensSource):
    return real.fetch_all()


def test_real_totals(real: MovieLensSource, real_all) -> None:
    batch = real_all
    assert real.rows_read == 100_836
    assert len(batch.events) == 100_836 and batch.quarantined.empty
    assert batch.events["user_id"].nunique() == 610
    assert batch.events["ts"].min() == utc(1996, 3, 29, 18, 36, 55)
    assert batch.events["value"].between(0.5, 5.0).all()


def test_real_first_row_by_hand(real: MovieLensSource) -> None:
    # ratings.csv line 2: "1,1,4.0,964982703" -> 2000-07-30 18:45:03 UTC
    start = time.perf_counter()
    events = real.fetch_day(date(2000, 7, 30)).events
    elapsed = time.perf_counter() - start
    row = events.set_index("event_id").loc["ml:0"]
    assert (row["user_id"], row["item_id"], row["event_type"], row["ts"], row["quantity"], row["value"]) == (
        "1", "1", "rating", utc(2000, 7, 30, 18, 45, 3), 1, 4.0)
    start_day = utc(2000, 7, 30)
    assert ((events["ts"] >= start_day) & (events["ts"] < start_day + timedelta(days=1))).all()
    assert elapsed < 1.0


def test_real_days_partition_the_file(real: MovieLensSource, real_all) -> None:
    days = real.days()
    assert len(days) == 4_110
    sample = days[:5] + days[2000:2005] + days[-5:]
    all_days = real_all.events["ts"].dt.floor("D")
    for day in sample:
        assert len(real.fetch_day(day).events) == int((all_days == utc(day.year, day.month, day.day)).sum())
