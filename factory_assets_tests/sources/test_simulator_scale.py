"""The simulator's world at scale: computed by blocks of users, memory follows users x favourites, not x items."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from factory_assets.data.sources.simulator import ShopSimulator

DAYS = (date(2024, 11, 1), date(2024, 11, 20))  # before and after the default shift


def test_blocks_of_users_give_the_world_of_one_block(monkeypatch):
    whole = ShopSimulator(n_users=700, n_items=90, seed=5)
    assert whole._user_blocks() == [(0, 700)]
    blocks = ShopSimulator._user_blocks
    monkeypatch.setattr(ShopSimulator, "_user_blocks", lambda self: blocks(self, max_cells=90 * 64))
    blocked = ShopSimulator(n_users=700, n_items=90, seed=5)
    assert len(blocked._user_blocks()) == 11
    for day in DAYS:
        assert np.array_equal(whole.favourites(day), blocked.favourites(day))
        # the same draws; only the order of one sum over users differs
        assert blocked._regime(day >= whole.config.shift_date).events_per_interaction == pytest.approx(
            whole._regime(day >= whole.config.shift_date).events_per_interaction, rel=1e-12)
        a, b = whole.generate_day(day), blocked.generate_day(day)
        assert len(a) == len(b) and a.equals(b)


def test_a_large_shop_keeps_no_users_by_items_matrix():
    sim = ShopSimulator(n_users=60_000, n_items=2_000, seed=1, events_per_day=5_000)
    big = [name for name, value in vars(sim).items() if isinstance(value, np.ndarray) and value.size >= 60_000 * 2_000]
    assert big == []
    assert len(sim.generate_day(DAYS[0])) > 0
    assert sim.favourites(DAYS[0]).shape == (60_000, sim.config.n_favourites)


@pytest.mark.parametrize("options", [{}, {"n_users": 400, "n_items": 3000, "seed": 9, "n_favourites": 12}])
def test_the_purchase_rate_per_interaction_equals_the_dense_sum(options):
    sim = ShopSimulator(**options)
    for post in (False, True):
        regime = sim._regime(post)
        # second method: the public (n_users, n_items) matrices, multiplied and summed over items
        day = DAYS[1] if post else DAYS[0]
        dense = (sim.item_probabilities(day) * sim.purchase_probabilities(day)).sum(axis=1)
        assert np.allclose(sim._buy_per_interaction(regime), dense, rtol=1e-12, atol=0)
