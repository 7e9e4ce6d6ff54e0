"""Tests of the embedded shop simulator (factory_assets.data.sources.simulator)."""

from __future__ import annotations

import re
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from factory_assets.data.sources.base import DayBatch, EventSource
from factory_assets.data.sources.schema import EVENT_COLUMNS, day_bounds, validate_events
from factory_assets.data.sources.simulator import (
    ShopSimulator,
    SimulatorConfig,
    black_friday,
    holiday_multiplier,
)

SMALL = dict(n_users=400, n_items=150, n_categories=8, events_per_day=3000)
PLAIN_DAY = date(2024, 10, 2)  # a Wednesday, before the default shift and the holiday season


def small(**overrides) -> ShopSimulator:
    return ShopSimulator(**{**SMALL, **overrides})


def views(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["event_type"] == "view"]


def index_of(ids: pd.Series) -> np.ndarray:
    """'u0042' -> 42, 'i017' -> 17 (parsed independently of the simulator's id tables)."""
    return ids.str.slice(1).astype(int).to_numpy()


# --------------------------------------------------------------------------- config and basics
def test_default_config_values():
    cfg = SimulatorConfig()
    assert (cfg.seed, cfg.n_users, cfg.n_items, cfg.n_categories) == (7, 3000, 800, 12)
    assert cfg.events_per_day == 20_000
    assert cfg.shift_date == date(2024, 11, 11)
    assert cfg.shift_strength == 1.5
    assert cfg.repeat_share == 0.35
    assert cfg.n_favourites == 6
    assert cfg.weekday_multipliers == (1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.2)


def test_overrides_and_validation():
    sim = ShopSimulator(SimulatorConfig(seed=3), n_users=50)
    assert sim.config.seed == 3 and sim.config.n_users == 50
    assert isinstance(sim, EventSource) and sim.name == "simulator"
    with pytest.raises(TypeError):
        ShopSimulator(no_such_field=1)
    with pytest.raises(ValueError, match="repeat_share"):
        ShopSimulator(repeat_share=1.5)
    with pytest.raises(ValueError, match="n_categories"):
        ShopSimulator(n_items=5, n_categories=10)


def test_public_helpers_shapes():
    sim = small()
    cats = sim.item_categories()
    assert cats.shape == (150,) and cats.dtype.kind == "i"
    assert set(np.unique(cats)) == set(range(8))  # every category has items
    assert list(sim.user_ids()[:3]) == ["u000", "u001", "u002"] and sim.user_ids().size == 400
    assert sim.item_ids()[-1] == "i149" and sim.item_ids().size == 150
    assert ShopSimulator(n_users=3000, n_items=800).user_ids()[42] == "u0042"
    assert ShopSimulator(n_users=3000, n_items=800).item_ids()[123] == "i123"
    assert sim.boosted_categories().size == 4
    assert np.isclose(sim.user_activity().sum(), 1.0)
    prices = sim.item_prices()
    assert prices.shape == (150,) and (prices > 0).all()
    np.testing.assert_array_equal(prices, np.round(prices, 2))
    for day in (date(2024, 11, 10), date(2024, 11, 11)):
        probs = sim.item_probabilities(day)
        assert probs.shape == (400, 150) and probs.dtype == np.float64
        assert (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        favs = sim.favourites(day)
        assert favs.shape == (400, 6)
        assert all(len(set(row)) == 6 for row in favs.tolist())


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_frames_and_order_independence():
    days = [date(2024, 10, 1), date(2024, 11, 11), date(2024, 11, 29)]
    a = small()
    first = {d: a.fetch_day(d).events for d in days}
    b = small()
    for d in reversed(days):  # a fresh instance, other order
        pd.testing.assert_frame_equal(b.fetch_day(d).events, first[d])
    for d in days:  # the same instance again
        pd.testing.assert_frame_equal(a.fetch_day(d).events, first[d])


def test_different_seed_different_frames():
    one = small(seed=1).fetch_day(PLAIN_DAY).events
    two = small(seed=2).fetch_day(PLAIN_DAY).events
    assert not one.equals(two)
    assert not np.array_equal(small(seed=1).item_probabilities(PLAIN_DAY), small(seed=2).item_probabilities(PLAIN_DAY))


def test_fetch_day_returns_daybatch_without_quarantine():
    batch = small().fetch_day(PLAIN_DAY)
    assert isinstance(batch, DayBatch)
    assert batch.quarantined.empty


# --------------------------------------------------------------------------- schema and values
def test_schema_dtypes_ids_and_timestamps():
    sim = small()
    frame = sim.fetch_day(PLAIN_DAY).events
    assert list(frame.columns) == list(EVENT_COLUMNS)
    assert frame["ts"].dtype == "datetime64[us, UTC]"
    assert frame["quantity"].dtype == np.int64 and frame["value"].dtype == np.float64
    for column in ("event_id", "user_id", "item_id", "event_type"):
        assert frame[column].dtype == object
        assert frame[column].map(type).eq(str).all()
    start, end = day_bounds(PLAIN_DAY)
    assert (frame["ts"] >= start).all() and (frame["ts"] < end).all()
    assert frame["event_id"].is_unique
    assert frame["event_id"].str.fullmatch(r"sim-2024-10-02-\d{6}").all()
    assert frame["user_id"].str.fullmatch(r"u\d{3}").all() and (index_of(frame["user_id"]) < 400).all()
    assert frame["item_id"].str.fullmatch(r"i\d{3}").all() and (index_of(frame["item_id"]) < 150).all()
    assert set(frame["event_type"]) == {"view", "add_to_cart", "purchase"}
    # Sorted by (ts, event_id), with a clean index.
    expected = frame.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected)
    # The schema validator accepts every row unchanged.
    accepted, quarantined = validate_events(frame, PLAIN_DAY)
    assert quarantined.empty
    pd.testing.assert_frame_equal(accepted, frame)


def test_event_ids_globally_unique_across_days():
    sim = small()
    frames = [sim.fetch_day(PLAIN_DAY + timedelta(days=k)).events for k in range(3)]
    ids = pd.concat([f["event_id"] for f in frames])
    assert ids.is_unique


def test_quantities_and_values():
    sim = small()
    frame = sim.fetch_day(PLAIN_DAY).events
    price = sim.item_prices()[index_of(frame["item_id"])]
    view = frame["event_type"].eq("view").to_numpy()
    cart = frame["event_type"].eq("add_to_cart").to_numpy()
    buy = frame["event_type"].eq("purchase").to_numpy()
    qty = frame["quantity"].to_numpy()
    value = frame["value"].to_numpy()
    assert (qty[view | cart] == 1).all() and (value[view] == 0.0).all()
    np.testing.assert_allclose(value[cart], price[cart])
    assert buy.sum() > 100
    assert set(np.unique(qty[buy])) <= {1, 2, 3, 4} and (qty[buy] > 1).any()
    assert (value[buy] > 0).all()
    np.testing.assert_allclose(value[buy], price[buy] * qty[buy], atol=0.005)
    # Truncated geometric(0.6) on 1..4: P(1) = 0.6 / (1 - 0.4**4) = 0.6156.
    p_one = 0.6 / (1 - 0.4**4)
    assert abs((qty[buy] == 1).mean() - p_one) < 4 * np.sqrt(p_one * (1 - p_one) / buy.sum())


def test_funnel_order_and_counts():
    frame = small().fetch_day(PLAIN_DAY).events
    counts = frame["event_type"].value_counts()
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"]
    # Carts are ~25 % of interactions (views).
    assert abs(counts["add_to_cart"] / counts["view"] - 0.25) < 0.03
    # Every purchase has a cart, every cart a view, of the same user-item pair earlier (or equal, when clipped).
    by_pair = frame.groupby(["user_id", "item_id", "event_type"]).size().unstack(fill_value=0)
    assert (by_pair.get("purchase", 0) <= by_pair["add_to_cart"]).all()
    assert (by_pair["add_to_cart"] <= by_pair["view"]).all()
    first = frame.groupby(["user_id", "item_id", "event_type"])["ts"].min().unstack()
    has_buy = first["purchase"].notna()
    assert (first.loc[has_buy, "add_to_cart"] <= first.loc[has_buy, "purchase"]).all()
    assert (first["view"] <= first["add_to_cart"].fillna(first["view"])).all()


def test_timestamps_clipped_at_end_of_day():
    # Huge delays push most carts/purchases past midnight; they are clipped to 23:59:59.999999.
    frame = small(cart_delay_minutes=100_000.0).fetch_day(PLAIN_DAY).events
    last = pd.Timestamp("2024-10-02 23:59:59.999999", tz="UTC")
    carts = frame[frame["event_type"] == "add_to_cart"]
    assert (carts["ts"] == last).mean() > 0.9
    assert frame["ts"].max() == last
    assert frame["event_id"].is_unique
    accepted, quarantined = validate_events(frame, PLAIN_DAY)
    assert quarantined.empty


# --------------------------------------------------------------------------- rhythms
def test_black_friday_and_holiday_multiplier_table():
    assert black_friday(2023) == date(2023, 11, 24)
    assert black_friday(2024) == date(2024, 11, 29)
    assert black_friday(2025) == date(2025, 11, 28)
    assert holiday_multiplier(date(2024, 10, 1)) == 1.0
    assert holiday_multiplier(date(2024, 11, 14)) == 1.0
    assert holiday_multiplier(date(2024, 11, 28)) == pytest.approx(1.5)
    assert holiday_multiplier(date(2024, 11, 29)) == 3.0
    assert holiday_multiplier(date(2024, 11, 30)) == 2.0
    assert holiday_multiplier(date(2024, 12, 2)) == 2.5
    assert holiday_multiplier(date(2024, 12, 5)) == 1.5
    assert holiday_multiplier(date(2024, 12, 23)) == pytest.approx(2.2)
    assert holiday_multiplier(date(2024, 12, 25)) == 1.3
    assert holiday_multiplier(date(2024, 12, 27)) == 1.0
    sim = small()
    assert sim.day_multiplier(date(2024, 11, 30)) == pytest.approx(2.0 * 1.3)  # BF Saturday
    assert small(holiday_peak=False).day_multiplier(date(2024, 11, 29)) == 1.0


def test_weekly_and_holiday_rhythm_in_counts():
    sim = small(shift_strength=0.0)
    october = [date(2024, 10, 1) + timedelta(days=k) for k in range(31)]
    weekdays = [d for d in october if d.weekday() < 5]
    saturdays = [d for d in october if d.weekday() == 5]
    count = lambda d: len(sim.fetch_day(d).events)  # noqa: E731
    plain = np.mean([count(d) for d in weekdays])
    assert plain == pytest.approx(3000, rel=0.03)  # events_per_day is the mean on a plain weekday
    assert np.mean([count(d) for d in saturdays]) / plain == pytest.approx(1.3, rel=0.06)
    # Holiday peak: Black Friday (Fri) x3.0, Cyber Monday x2.5, Mon Dec 23 x2.2, Fri Dec 27 back to 1.0.
    assert count(date(2024, 11, 29)) / plain == pytest.approx(3.0, rel=0.06)
    assert count(date(2024, 12, 2)) / plain == pytest.approx(2.5, rel=0.06)
    assert count(date(2024, 12, 23)) / plain == pytest.approx(2.2, rel=0.06)
    assert count(date(2024, 12, 27)) / plain == pytest.approx(1.0, rel=0.08)


def test_hour_of_day_evening_peak():
    frame = small(events_per_day=20_000).fetch_day(PLAIN_DAY).events
    hours = views(frame)["ts"].dt.hour.to_numpy()
    share = np.bincount(hours, minlength=24) / hours.size
    weights = np.array([0.9, 0.6, 0.4, 0.3, 0.25, 0.3, 0.5, 0.8, 1.0, 1.1, 1.2, 1.3,
                        1.4, 1.3, 1.2, 1.2, 1.3, 1.5, 1.8, 2.1, 2.3, 2.1, 1.7, 1.3])  # fmt: skip
    np.testing.assert_allclose(share, weights / weights.sum(), atol=0.01)
    _, p_value = stats.chisquare(np.bincount(hours, minlength=24), weights / weights.sum() * hours.size)
    assert p_value > 1e-3
    assert share.argmax() in (19, 20, 21)


# --------------------------------------------------------------------------- preference shift
def boosted_share(sim: ShopSimulator, frame: pd.DataFrame) -> float:
    cats = sim.item_categories()[index_of(views(frame)["item_id"])]
    return float(np.isin(cats, sim.boosted_categories()).mean())


def expected_boosted_share(sim: ShopSimulator, day: date) -> float:
    boosted_items = np.isin(sim.item_categories(), sim.boosted_categories())
    return float(sim.user_activity() @ sim.item_probabilities(day)[:, boosted_items].sum(axis=1))


def test_shift_jumps_on_shift_date():
    sim = small(events_per_day=20_000)
    before, on = date(2024, 11, 10), date(2024, 11, 11)
    exp_before, exp_on = expected_boosted_share(sim, before), expected_boosted_share(sim, on)
    assert exp_on / exp_before > 1.3  # strength 1.5 moves a lot of mass
    got_before = boosted_share(sim, sim.fetch_day(before).events)
    got_on = boosted_share(sim, sim.fetch_day(on).events)
    assert got_before == pytest.approx(exp_before, abs=0.02)
    assert got_on == pytest.approx(exp_on, abs=0.02)
    assert got_on / got_before == pytest.approx(exp_on / exp_before, rel=0.06)
    # Later days keep the shifted preferences; earlier days keep the old ones.
    np.testing.assert_array_equal(sim.item_probabilities(date(2024, 12, 1)), sim.item_probabilities(on))
    np.testing.assert_array_equal(sim.item_probabilities(date(2024, 1, 1)), sim.item_probabilities(before))


def test_shift_multiplies_category_preferences_by_exp_two_s():
    s = 0.8
    sim = small(shift_strength=s, repeat_share=0.0)
    pre, post = sim.item_probabilities(date(2024, 11, 10)), sim.item_probabilities(date(2024, 11, 11))
    cats = sim.item_categories()
    boosted = np.isin(cats, sim.boosted_categories())
    b, o = np.flatnonzero(boosted)[0], np.flatnonzero(~boosted)[0]
    # For every user: (post/pre of a boosted item) / (post/pre of another item) = e^s / e^-s.
    ratio = (post[:, b] / pre[:, b]) / (post[:, o] / pre[:, o])
    np.testing.assert_allclose(ratio, np.exp(2 * s), rtol=1e-9)
    # Within a category the item mix is unchanged.
    same_cat = np.flatnonzero(cats == cats[b])
    np.testing.assert_allclose(post[:, same_cat] / post[:, same_cat].sum(1, keepdims=True),
                               pre[:, same_cat] / pre[:, same_cat].sum(1, keepdims=True), rtol=1e-9)


def test_post_shift_favourites_lean_to_boosted_categories():
    sim = small()
    boosted = sim.boosted_categories()
    cats = sim.item_categories()
    pre = np.isin(cats[sim.favourites(date(2024, 11, 10))], boosted).mean()
    post = np.isin(cats[sim.favourites(date(2024, 11, 11))], boosted).mean()
    assert post > pre + 0.1
    # With only favourites (repeat_share=1) the item distribution follows them.
    fav_only = small(repeat_share=1.0)
    probs = fav_only.item_probabilities(date(2024, 11, 11))
    favs = fav_only.favourites(date(2024, 11, 11))
    np.testing.assert_allclose(np.take_along_axis(probs, favs, axis=1), 1 / 6)


def test_strength_zero_changes_nothing():
    sim = small(events_per_day=20_000, shift_strength=0.0)
    before, on = date(2024, 11, 10), date(2024, 11, 11)
    np.testing.assert_array_equal(sim.item_probabilities(before), sim.item_probabilities(on))
    np.testing.assert_array_equal(sim.favourites(before), sim.favourites(on))
    # Category counts of views of the two days: homogeneous (chi-square two-sample test).
    counts = np.array(
        [np.bincount(sim.item_categories()[index_of(views(sim.fetch_day(d).events)["item_id"])], minlength=8)
         for d in (before, on)]
    )
    _, p_value, _, _ = stats.chi2_contingency(counts)
    assert p_value > 1e-3
    # Pre-shift days do not depend on the strength at all.
    pd.testing.assert_frame_equal(sim.fetch_day(before).events,
                                  small(events_per_day=20_000, shift_strength=1.5).fetch_day(before).events)
    assert not sim.fetch_day(on).events.equals(small(events_per_day=20_000).fetch_day(on).events)


# --------------------------------------------------------------------------- oracle agreement
@pytest.mark.parametrize("day", [date(2024, 10, 2), date(2024, 11, 12)])
def test_item_probabilities_match_empirical_frequencies(day):
    sim = small(events_per_day=40_000)
    frame = views(sim.fetch_day(day).events)
    users, items = index_of(frame["user_id"]), index_of(frame["item_id"])
    n = len(frame)
    probs = sim.item_probabilities(day)
    marginal = sim.user_activity() @ probs  # P(item) of one interaction
    # Category shares within 4 binomial standard errors.
    cats = sim.item_categories()
    exp_cat = np.bincount(cats, weights=marginal, minlength=8)
    got_cat = np.bincount(cats[items], minlength=8) / n
    np.testing.assert_array_less(np.abs(got_cat - exp_cat), 4 * np.sqrt(exp_cat * (1 - exp_cat) / n) + 1e-3)
    # Item counts: chi-square goodness of fit over all items.
    observed = np.bincount(items, minlength=150)
    _, p_value = stats.chisquare(observed, marginal * n)
    assert p_value > 1e-3
    # User counts follow the activity distribution.
    _, p_value = stats.chisquare(np.bincount(users, minlength=400), sim.user_activity() * n)
    assert p_value > 1e-3
    # Repeat behaviour: share of views that hit a current favourite of the user.
    favs = sim.favourites(day)
    hit = (favs[users] == items[:, None]).any(axis=1).mean()
    exp_hit = float(sim.user_activity() @ np.take_along_axis(probs, favs, axis=1).sum(axis=1))
    assert hit == pytest.approx(exp_hit, abs=4 * np.sqrt(exp_hit * (1 - exp_hit) / n))


def test_purchases_depend_on_affinity():
    sim = small(events_per_day=40_000)
    frame = sim.fetch_day(PLAIN_DAY).events
    carts = frame[frame["event_type"] == "add_to_cart"]
    buys = frame[frame["event_type"] == "purchase"]
    p_buy = sim.purchase_probabilities(PLAIN_DAY)
    assert p_buy.shape == (400, 150) and ((p_buy > 0) & (p_buy < 1)).all()
    # Overall conversion of carts equals the mean model probability over the carted pairs.
    expected = p_buy[index_of(carts["user_id"]), index_of(carts["item_id"])]
    assert len(buys) / len(carts) == pytest.approx(expected.mean(), abs=4 * np.sqrt(expected.mean() / len(carts)))
    # Preferred categories convert better: carts in the user's top category vs the rest.
    prefs = sim.user_preferences(PLAIN_DAY)
    top_cat = prefs.argmax(axis=1)

    def in_top(rows: pd.DataFrame) -> np.ndarray:
        return sim.item_categories()[index_of(rows["item_id"])] == top_cat[index_of(rows["user_id"])]

    conv_top = in_top(buys).sum() / in_top(carts).sum()
    conv_rest = (~in_top(buys)).sum() / (~in_top(carts)).sum()
    assert conv_top > conv_rest + 0.05
