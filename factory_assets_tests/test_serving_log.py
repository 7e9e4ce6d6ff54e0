"""The served-recommendation log: schema, Parquet files, replay from the simulator, scoring, the promotion rule."""

from __future__ import annotations

import math
import os
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from factory_assets.ml import served_log as sl
from factory_assets.ml.recsys.model import BlendModel, ModelParams, fit_model
from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets_tests.helpers import SMALL_SHOP

DAY = date(2024, 10, 29)


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _lists(request_id: str, ts: str, user: str, lists: dict[str, tuple[int, list[str]]]) -> list[dict]:
    """Long rows of one request: ``{role: (model_version, [item, ...])}``, scores decreasing."""
    rows = []
    for role, (version, items) in lists.items():
        for pos, item in enumerate(items, start=1):
            rows.append({"request_id": request_id, "ts": _ts(ts), "user_id": user, "model_version": version,
                         "role": role, "item_id": item, "position": pos, "score": 10.0 - pos})
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return frame


@pytest.fixture
def small_log() -> pd.DataFrame:
    return _frame(
        _lists("r1", "2024-10-29 10:00", "a", {"champion": (1, ["x", "y", "z"]), "shadow": (2, ["y", "x", "w"])})
        + _lists("r2", "2024-10-30 09:00", "b", {"champion": (1, ["w", "x"]), "shadow": (2, ["z", "y"])})
    )


# ----------------------------------------------------------------------------------------------- schema


def test_a_missing_column_is_named(small_log):
    with pytest.raises(sl.LogSchemaError, match="'position'") as info:
        sl.validate_log(small_log.drop(columns=["position"]))
    assert info.value.field == "position"


def test_a_bad_role_is_named(small_log):
    bad = small_log.assign(role=np.where(small_log.index == 0, "challenger", small_log["role"]))
    with pytest.raises(sl.LogSchemaError, match="'role'.*challenger") as info:
        sl.validate_log(bad)
    assert info.value.field == "role"


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda f: f.assign(ts=f["ts"].dt.tz_localize(None)), "ts"),  # naive: which zone?
        (lambda f: f.assign(position=0), "position"),  # 1-based
        (lambda f: f.assign(model_version=f["model_version"].astype(float) + 0.5), "model_version"),
        (lambda f: f.assign(score=np.nan), "score"),
        (lambda f: f.assign(user_id=None), "user_id"),
        (lambda f: f.assign(item_id="x"), "item_id"),  # an item twice in one list
        (lambda f: f.assign(user_id=["a"] * 3 + ["other"] + ["a"] * (len(f) - 4)), "user_id"),  # r1 has two users
    ],
)
def test_field_errors_name_the_field(small_log, change, field):
    with pytest.raises(sl.LogSchemaError) as info:
        sl.validate_log(change(small_log))
    assert info.value.field == field and repr(field) in str(info.value)


def test_validation_normalises_dtypes_and_drops_extra_columns(small_log):
    messy = small_log.assign(ts=small_log["ts"].dt.tz_convert("Europe/Paris"), position=small_log["position"].astype(float),
                             debug="x")
    clean = sl.validate_log(messy)
    assert list(clean.columns) == list(sl.LOG_COLUMNS)
    assert {c: str(t) for c, t in clean.dtypes.items()} == {c: t for c, (t, _) in sl.LOG_SCHEMA.items()}
    assert clean["ts"].iloc[0] == _ts("2024-10-29 10:00")


# ----------------------------------------------------------------------------------------------- files


def test_write_read_round_trip_and_idempotent_rewrite(small_log, tmp_path):
    directory = tmp_path / "served_log"
    path = sl.write_log_file(small_log, directory)
    assert path.parent == directory and path.name.startswith("served_20241029_20241030_")
    mtime = path.stat().st_mtime_ns
    again = sl.write_log_file(small_log.sample(frac=1.0, random_state=3), directory)  # same rows, other order
    assert again == path and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in directory.iterdir()) == [path.name]  # no second file, no temporary file left

    day1 = sl.read_log(directory, DAY)
    expected = sl.validate_log(small_log[small_log["request_id"] == "r1"]).sort_values(["role", "position"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(day1, expected)
    assert set(sl.read_log(directory, DAY + timedelta(days=1))["request_id"]) == {"r2"}
    assert sl.read_log(directory, DAY + timedelta(days=2)).empty
    assert sl.read_log(tmp_path / "absent", DAY).empty

    assert day1.attrs["problems"] == [] and day1.attrs["files"] == [path.name]

    # A second file repeating r1's rows identically adds nothing; one disagreeing on a list's rows is
    # reported and the first file (in name order) wins.
    sl.write_log_file(small_log[small_log["request_id"] == "r1"], directory)
    both = sl.read_log(directory, DAY)
    assert both.attrs["problems"] == []
    pd.testing.assert_frame_equal(both, expected)
    changed = sl.write_log_file(small_log.assign(score=small_log["score"] + 1), directory)
    assert changed != path  # other content, other file
    conflicted = sl.read_log(directory, DAY)
    assert len(conflicted) == 6 and "conflict" in conflicted.attrs["problems"][0]


def test_unreadable_files_are_reported_not_fatal(small_log, tmp_path):
    good = sl.write_log_file(small_log, tmp_path)
    (tmp_path / "served_20241029_20241029_0123456789abcdef.parquet").write_bytes(b"not parquet")
    small_log.drop(columns=["role"]).to_parquet(tmp_path / "legacy.parquet")
    problems: list[sl.LogProblem] = []
    frame = sl.read_log(tmp_path, DAY, problems)
    assert len(frame) == 6 and frame.attrs["files"] == [good.name]
    reasons = {os.path.basename(p.path): p.reason for p in problems}
    assert set(reasons) == {"served_20241029_20241029_0123456789abcdef.parquet", "legacy.parquet"}
    assert "'role'" in reasons["legacy.parquet"]


def test_writing_refuses_bad_rows_and_leaves_nothing(small_log, tmp_path):
    with pytest.raises(sl.LogSchemaError):
        sl.write_log_file(small_log.assign(role="both"), tmp_path)
    with pytest.raises(ValueError, match="no served-log rows"):
        sl.write_log_file(small_log.iloc[0:0], tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- scoring


def test_score_log_by_hand():
    log = _frame(
        _lists("r1", "2024-10-29 10:00", "a", {"champion": (1, ["x", "y", "z"]), "shadow": (2, ["y", "x", "w"])})
        + _lists("r2", "2024-10-29 12:00", "b", {"champion": (1, ["w", "x"]), "shadow": (2, ["z", "y"])})
        + _lists("r3", "2024-10-29 08:00", "c", {"champion": (1, ["x", "y"]), "shadow": (2, ["y", "z"])})
        + _lists("r4", "2024-10-29 09:00", "d", {"champion": (1, ["x"])})  # champion only: excluded
    )
    purchases = pd.DataFrame(
        [
            ("a", "y", "2024-10-29 11:00", "purchase"),  # after r1: counts
            ("a", "x", "2024-10-29 09:00", "purchase"),  # before r1: never counts
            ("a", "q", "2024-10-30 01:00", "purchase"),  # next UTC day: outside the window
            ("a", "z", "2024-10-29 10:30", "view"),  # not a purchase
            ("b", "w", "2024-10-29 13:00", "purchase"),
            ("b", "y", "2024-10-29 14:00", "purchase"),
            ("b", "y", "2024-10-29 15:00", "purchase"),  # bought twice: relevant once
            ("c", "y", "2024-10-29 08:00", "purchase"),  # at the request's instant: not after it
            ("c", "z", "2024-10-29 09:00", "purchase"),
            ("d", "x", "2024-10-29 10:00", "purchase"),  # r4 is not scored at all
            ("e", "x", "2024-10-29 10:00", "purchase"),  # a user without a request
        ],
        columns=["user_id", "item_id", "ts", "event_type"],
    ).assign(ts=lambda f: pd.to_datetime(f["ts"], utc=True))
    score = sl.score_log(log, purchases)

    # Attributed: r1 {y}, r2 {w, y}, r3 {z}.  With d1 = 1/log2(3) = 0.6309298 and IDCG{2} = 1 + d1 = 1.6309298:
    #   r1 champion [x, y, z]: y at 2 -> NDCG d1 = 0.6309298   shadow [y, x, w]: y at 1 -> 1.0
    #   r2 champion [w, x]: w at 1 -> 1 / 1.6309298 = 0.6131472  shadow [z, y]: y at 2 -> d1 / 1.6309298 = 0.3868528
    #   r3 champion [x, y]: nothing -> 0                        shadow [y, z]: z at 2 -> d1 = 0.6309298
    # champion: HR 2/3, NDCG (0.6309298 + 0.6131472 + 0) / 3 = 0.4146923
    # shadow:   HR 3/3, NDCG (1 + 0.3868528 + 0.6309298) / 3 = 0.6725942
    d1 = 1 / math.log2(3)
    assert (score.n_requests, score.n_excluded, score.n_converting) == (3, 1, 3)
    assert list(score.request_ids) == ["r1", "r2", "r3"]
    champion, shadow = score.roles["champion"], score.roles["shadow"]
    assert champion.model_versions == (1,) and shadow.model_versions == (2,)
    assert champion.hit_rate_at_10 == pytest.approx(2 / 3) and shadow.hit_rate_at_10 == pytest.approx(1.0)
    assert champion.ndcg_at_10 == pytest.approx(0.4146923, abs=1e-6)
    assert shadow.ndcg_at_10 == pytest.approx(0.6725942, abs=1e-6)
    np.testing.assert_allclose(score.ndcg_diff, [1 - d1, d1 / (1 + d1) - 1 / (1 + d1), d1])
    np.testing.assert_allclose(score.hit_diff, [0.0, 0.0, 1.0])
    assert score.ndcg_lift == pytest.approx(0.6725942 - 0.4146923, abs=1e-6)


def test_score_log_without_pairs_or_purchases_is_zero():
    only_champion = _frame(_lists("r1", "2024-10-29 10:00", "a", {"champion": (1, ["x"])}))
    empty = pd.DataFrame(columns=["user_id", "item_id", "ts"])
    score = sl.score_log(only_champion, empty)
    assert (score.n_requests, score.n_excluded) == (0, 1)
    assert score.roles["shadow"].ndcg_at_10 == 0.0 and score.ndcg_lift == 0.0 and score.ndcg_lift_se is None
    assert sl.score_log(sl.empty_log(), empty).n_requests == 0


def test_version_pairs_split_a_day_on_which_the_champion_changed():
    log = _frame(
        _lists("r1", "2024-10-29 10:00", "a", {"champion": (1, ["x"]), "shadow": (3, ["y"])})
        + _lists("r2", "2024-10-29 12:00", "b", {"champion": (2, ["x"]), "shadow": (3, ["y"])})
        + _lists("r3", "2024-10-29 13:00", "c", {"champion": (2, ["x"])})
    )
    assert sl.version_pairs(log) == [(1, 3), (2, 3)]
    assert set(sl.requests_of_pair(log, 2, 3)["request_id"]) == {"r2"}


# ----------------------------------------------------------------------------------------------- replay


@pytest.fixture(scope="module")
def simulator() -> ShopSimulator:
    return ShopSimulator(**{**SMALL_SHOP, "shift_date": date(2024, 11, 11)})


@pytest.fixture(scope="module")
def model(simulator) -> BlendModel:
    frames = []
    for offset in range(7):
        day = DAY - timedelta(days=7 - offset)
        events = simulator.fetch_day(day).events
        frames.append(
            events.assign(day=day, weight=1.0, n_conversions=(events["event_type"] == "purchase").astype(int))
            .groupby(["day", "user_id", "item_id"], as_index=False)[["weight", "n_conversions"]].sum()
        )
    return fit_model(pd.concat(frames, ignore_index=True), DAY - timedelta(days=1), ModelParams(factors=8, iterations=3), 1.0)


def test_replay_logs_both_roles_with_ten_distinct_items(simulator, model):
    log = sl.replay_from_simulator(simulator, DAY, (1, model), (2, model.als_only()), n_requests=150, seed=4)
    assert log["request_id"].nunique() == 150
    lists = log.groupby(["request_id", "role"])
    assert lists.ngroups == 300  # both roles for every request
    assert (lists["item_id"].nunique() == 10).all()
    assert all(sorted(p) == list(range(1, 11)) for p in lists["position"].apply(list))
    assert set(log.loc[log["role"] == "champion", "model_version"]) == {1}
    assert set(log.loc[log["role"] == "shadow", "model_version"]) == {2}

    events = simulator.fetch_day(DAY).events
    first = events.groupby("user_id")["ts"].min()
    requests = log.drop_duplicates("request_id").set_index("user_id")
    assert requests.index.is_unique  # one request per drawn user
    assert (requests["ts"] == first.loc[requests.index]).all()  # at the user's first event of the day
    assert (requests["ts"].dt.date == DAY).all()
    purchases = events[events["event_type"] == "purchase"].merge(requests[["ts"]], left_on="user_id", right_index=True)
    assert (purchases["ts_x"] > purchases["ts_y"]).all()  # every purchase comes after the request

    # A user the model never saw gets the popularity fallback (the same list as any other cold user).
    cold_items, _ = sl.recommend_rows(model, ["nobody", "nobody-else"])
    np.testing.assert_array_equal(cold_items[0], cold_items[1])
    np.testing.assert_array_equal(cold_items[0], np.argsort(-model.popularity.astype(np.float64), kind="stable")[:10])

    again = sl.replay_from_simulator(simulator, DAY, (1, model), (2, model.als_only()), n_requests=150, seed=4)
    pd.testing.assert_frame_equal(log, again)  # deterministic
    assert len(sl.replay_from_simulator(simulator, DAY, (1, model), (2, model), n_requests=10_000, seed=4)) == (
        2 * 10 * events["user_id"].nunique()
    )  # capped at the day's active users


# ----------------------------------------------------------------------------------------------- the rule


def _history(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["day", "champion_version", "shadow_version", "n_requests",
                                       "champion_ndcg_at_10", "shadow_ndcg_at_10"])


def test_shadow_verdict():
    d = [DAY + timedelta(days=i) for i in range(5)]
    rows = [(d[0], 1, 2, 50, 0.30, 0.31), (d[1], 1, 2, 50, 0.30, 0.32), (d[2], 1, 3, 50, 0.30, 0.90),
            (d[3], 1, 2, 0, None, None), (d[4], 1, 2, 50, 0.30, 0.33)]
    history = _history(rows)
    assert not sl.shadow_verdict(history, 1, 2, d[3]).promote  # 2 scored days (d3 had no requests)
    verdict = sl.shadow_verdict(history, 1, 2, d[4])
    assert verdict.promote and verdict.days == (d[0], d[1], d[4])
    assert "2024-10-29 0.3100 vs 0.3000 (50 requests)" in verdict.reason
    assert not sl.shadow_verdict(history, 1, 2, d[4], min_lift=0.015).promote  # d0's lift is only 0.01
    assert sl.shadow_verdict(history, 1, 2, d[4], min_days=2, min_lift=0.015).promote  # the last 2 suffice
    assert not sl.shadow_verdict(history, 2, 2, d[4]).promote  # another champion: no evidence
    assert not sl.shadow_verdict(history, 1, 2, d[4], min_requests=51).promote
    worse = _history([(day, 1, 2, 50, 0.30, 0.30) for day in d])  # a tie is not better
    assert "keep collecting" in sl.shadow_verdict(worse, 1, 2, d[4]).reason
    with pytest.raises(ValueError):
        sl.shadow_verdict(history, 1, 2, d[4], min_days=0)
