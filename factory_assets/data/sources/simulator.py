"""A deterministic, embedded shop simulator that produces events in the common schema.

The simulator has two layers of randomness:

* the **world**, drawn once from ``np.random.default_rng(seed)``: item categories, Zipf-like item
  popularity within each category, lognormal prices, Zipf-like user activity, every user's category
  preferences (a Dirichlet draw), each user's favourite items (pre- and post-shift) and which categories
  the preference shift boosts;
* the **day**, drawn from ``np.random.default_rng([seed, day.toordinal()])``: so any single day can be
  generated on its own, in any order, in any process, and is always identical.

Generative model of one day
---------------------------
1. Number of *interactions* ``N ~ Poisson(base * weekday_multiplier(day) * holiday_multiplier(day))``,
   where ``base`` is chosen so that the expected number of *events* (views + carts + purchases) on a plain
   weekday (multiplier 1) is :attr:`SimulatorConfig.events_per_day`.
2. Each interaction picks a user by activity (:meth:`ShopSimulator.user_activity`), then an item: with
   probability ``repeat_share`` uniformly one of the user's favourites (the pre-shift set before
   ``shift_date``, the post-shift set from it on), otherwise a category from the user's preference of
   that day and an item from the category's popularity.  :meth:`ShopSimulator.item_probabilities` is
   exactly this conditional distribution.
3. The interaction's time is an hour drawn from ``hour_weights`` (UTC, evening peak) plus a uniform
   offset inside the hour.  It emits a ``view``; with probability ``cart_rate`` an ``add_to_cart``
   an exponential delay (mean ``cart_delay_minutes``) later; a cart turns into a ``purchase`` (another
   exponential delay, mean ``purchase_delay_minutes``) with a probability that rises mildly with the
   user's affinity for the item (see :meth:`ShopSimulator.purchase_probabilities`).
   All timestamps are clipped to the UTC day (last possible one ``23:59:59.999999``).

Rhythm multipliers (applied to the expected number of interactions, multiplied together)
---------------------------------------------------------------------------------------
* weekday (default ``weekday_multipliers``): Monday-Friday 1.0, Saturday 1.3, Sunday 1.2;
* holiday (:func:`holiday_multiplier`, when ``holiday_peak`` is on; BF = Black Friday, the day after
  the fourth Thursday of November):

  ============================  =====================================================
  days                          multiplier
  ============================  =====================================================
  until Nov 14                  1.0
  Nov 15 .. BF-1                linear ramp from 1.0 (Nov 14) to 1.5 (BF-1)
  BF (Black Friday)             3.0
  BF+1, BF+2 (weekend)          2.0
  BF+3 (Cyber Monday)           2.5
  BF+4 .. Dec 10                1.5
  Dec 11 .. Dec 23              linear ramp from 1.5 (Dec 10) to 2.2 (Dec 23)
  Dec 24 / Dec 25 / Dec 26      1.8 / 1.3 / 1.6
  Dec 27 .. Dec 31              1.0
  ============================  =====================================================

Preference shift
----------------
From ``shift_date`` on (inclusive), every user's category preference is multiplied by
``exp(+shift_strength)`` for the boosted half of the categories (:meth:`ShopSimulator.boosted_categories`)
and by ``exp(-shift_strength)`` for the rest, then renormalised; and every user switches to a second set
of favourites drawn (without replacement, coupled to the first set by common random numbers) from the
shifted preferences.  With ``shift_strength == 0`` both sets are identical and nothing changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd

from factory_assets.data.sources.base import DayBatch, EventSource

__all__ = [
    "DEFAULT_HOUR_WEIGHTS",
    "DEFAULT_WEEKDAY_MULTIPLIERS",
    "ShopSimulator",
    "SimulatorConfig",
    "black_friday",
    "holiday_multiplier",
]

#: Relative activity per UTC hour 0..23: night trough around 04:00, midday bump, evening peak at 20:00.
DEFAULT_HOUR_WEIGHTS: tuple[float, ...] = (
    0.9, 0.6, 0.4, 0.3, 0.25, 0.3, 0.5, 0.8, 1.0, 1.1, 1.2, 1.3,
    1.4, 1.3, 1.2, 1.2, 1.3, 1.5, 1.8, 2.1, 2.3, 2.1, 1.7, 1.3,
)  # fmt: skip

#: Multiplier per weekday, Monday (index 0) to Sunday (index 6).
DEFAULT_WEEKDAY_MULTIPLIERS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.2)

_EVENT_TYPE_NAMES = np.array(["view", "add_to_cart", "purchase"], dtype=object)
_US_PER_DAY = 86_400_000_000
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class SimulatorConfig:
    """Parameters of the simulated shop; every field has a default.

    Attributes:
        seed: seed of the world and (with the day's ordinal) of each day's events.
        n_users: number of users; ids ``u`` + zero-padded index (width of ``n_users - 1``, at least 1).
        n_items: number of items; ids ``i`` + zero-padded index.
        n_categories: number of item categories (every category gets at least one item).
        events_per_day: expected number of events (views + carts + purchases) on a plain weekday
            (weekday and holiday multipliers both 1).
        shift_date: first UTC day (inclusive) of the shifted preferences and post-shift favourites.
        shift_strength: log-multiplier of the shift: boosted categories x ``exp(+s)``, others x ``exp(-s)``
            before renormalising; 0 means no shift at all.
        repeat_share: probability that an interaction is with one of the user's favourite items.
        n_favourites: favourites per user (distinct items, drawn from the user's preferred categories).
        preference_concentration: Dirichlet concentration of user category preferences (per category;
            small = users focus on few categories).
        item_zipf: Zipf exponent of item popularity inside a category (weight ``1 / rank**item_zipf``).
        user_zipf: Zipf exponent of user activity (weight ``1 / rank**user_zipf``).
        price_median: median item price (currency units); prices are lognormal, rounded to cents, >= 0.5.
        price_sigma: sigma of log price (a per-category log offset with sd ``price_sigma / 2`` is included).
        cart_rate: probability that an interaction also adds the item to the cart.
        purchase_rate: purchase probability of a cart for a neutral pair (affinity 1, not a favourite).
        purchase_affinity: slope of the purchase log-odds in ``log(n_categories * preference[category])``
            (clipped to [-3, 3]); 0 makes purchases independent of preference.
        favourite_purchase_boost: added to the purchase log-odds when the item is a current favourite.
        quantity_p: success probability of the geometric purchase quantity, truncated to 1..max_quantity.
        max_quantity: largest purchase quantity.
        cart_delay_minutes: mean exponential delay from view to cart, minutes.
        purchase_delay_minutes: mean exponential delay from cart to purchase, minutes.
        weekday_multipliers: 7 multipliers, Monday first.
        holiday_peak: apply :func:`holiday_multiplier` (November/December peak) when true.
        hour_weights: 24 non-negative relative weights of the UTC hour of an interaction.
    """

    seed: int = 7
    n_users: int = 3000
    n_items: int = 800
    n_categories: int = 12
    events_per_day: float = 20_000
    shift_date: date = date(2024, 11, 11)
    shift_strength: float = 1.5
    repeat_share: float = 0.35
    n_favourites: int = 6
    preference_concentration: float = 0.3
    item_zipf: float = 1.0
    user_zipf: float = 0.8
    price_median: float = 25.0
    price_sigma: float = 0.8
    cart_rate: float = 0.25
    purchase_rate: float = 0.3
    purchase_affinity: float = 0.5
    favourite_purchase_boost: float = 0.5
    quantity_p: float = 0.6
    max_quantity: int = 4
    cart_delay_minutes: float = 3.0
    purchase_delay_minutes: float = 5.0
    weekday_multipliers: tuple[float, ...] = DEFAULT_WEEKDAY_MULTIPLIERS
    holiday_peak: bool = True
    hour_weights: tuple[float, ...] = field(default=DEFAULT_HOUR_WEIGHTS)

    def __post_init__(self) -> None:
        problems = []
        if self.n_users < 1:
            problems.append("n_users must be >= 1")
        if self.n_categories < 1 or self.n_items < self.n_categories:
            problems.append("need 1 <= n_categories <= n_items")
        if not 1 <= self.n_favourites <= self.n_items:
            problems.append("n_favourites must be in 1..n_items")
        if not self.events_per_day >= 0:
            problems.append("events_per_day must be >= 0")
        for name in ("repeat_share", "cart_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        if not 0.0 < self.purchase_rate < 1.0:
            problems.append("purchase_rate must be in (0, 1)")
        if not 0.0 < self.quantity_p <= 1.0 or self.max_quantity < 1:
            problems.append("quantity_p must be in (0, 1] and max_quantity >= 1")
        if self.preference_concentration <= 0:
            problems.append("preference_concentration must be > 0")
        if len(self.weekday_multipliers) != 7 or min(self.weekday_multipliers) < 0:
            problems.append("weekday_multipliers needs 7 non-negative values")
        if len(self.hour_weights) != 24 or min(self.hour_weights) < 0 or sum(self.hour_weights) <= 0:
            problems.append("hour_weights needs 24 non-negative values with a positive sum")
        if self.cart_delay_minutes < 0 or self.purchase_delay_minutes < 0:
            problems.append("delays must be >= 0")
        if not isinstance(self.shift_date, date):
            problems.append("shift_date must be a datetime.date")
        if problems:
            raise ValueError("invalid SimulatorConfig: " + "; ".join(problems))


def black_friday(year: int) -> date:
    """Black Friday of ``year``: the day after the fourth Thursday of November."""
    first = date(year, 11, 1)
    first_thursday = first + timedelta(days=(3 - first.weekday()) % 7)
    return first_thursday + timedelta(days=22)


def holiday_multiplier(day: date) -> float:
    """The holiday-season multiplier of ``day`` (1.0 outside Nov 15 - Dec 26); table in the module doc."""
    bf = black_friday(day.year)
    ramp_start = date(day.year, 11, 14)
    if day <= ramp_start or day.month < 11:
        return 1.0
    if day < bf:
        span = (bf - timedelta(days=1) - ramp_start).days
        return 1.0 + 0.5 * (day - ramp_start).days / span
    offset = (day - bf).days
    if offset == 0:
        return 3.0
    if offset in (1, 2):
        return 2.0
    if offset == 3:
        return 2.5
    if day <= date(day.year, 12, 10):
        return 1.5
    if day <= date(day.year, 12, 23):
        return 1.5 + 0.7 * (day.day - 10) / 13
    return {24: 1.8, 25: 1.3, 26: 1.6}.get(day.day, 1.0)


@dataclass(frozen=True)
class _Regime:
    """Everything that depends on whether a day is before or after the shift."""

    preferences: np.ndarray  # (n_users, n_categories) float64, rows sum to 1
    pref_cdf: np.ndarray  # (n_users, n_categories) cumulative, last column exactly 1
    favourites: np.ndarray  # (n_users, n_favourites) int64 item indices
    affinity_logit: np.ndarray  # (n_users, n_categories) purchase log-odds without the favourite boost
    events_per_interaction: float  # expected events (view + cart + purchase) per interaction


class ShopSimulator(EventSource):
    """Deterministic embedded shop: ``fetch_day(day)`` simulates that UTC day's events.

    Args:
        config: the parameters (default :class:`SimulatorConfig()`).
        **overrides: fields replacing those of ``config``, e.g. ``ShopSimulator(seed=3, n_users=500)``.

    Raises:
        TypeError: an override names no config field.
        ValueError: the resulting config is invalid.
    """

    name = "simulator"

    def __init__(self, config: SimulatorConfig | None = None, **overrides: object) -> None:
        base = config if config is not None else SimulatorConfig()
        self.config: SimulatorConfig = dataclasses.replace(base, **overrides) if overrides else base
        self._build_world()
        self._regimes: dict[bool, _Regime] = {}
        self._number_table: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ world
    def _build_world(self) -> None:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        n_u, n_i, n_c = cfg.n_users, cfg.n_items, cfg.n_categories

        # Items: balanced categories in random order, Zipf popularity in a random rank order per category.
        self._item_cat = rng.permutation(np.arange(n_i) % n_c).astype(np.int64)
        rank_keys = rng.random(n_i)
        order = np.lexsort((rank_keys, self._item_cat))  # items grouped by category, random within
        counts = np.bincount(self._item_cat, minlength=n_c)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        rank = np.empty(n_i, dtype=np.int64)
        rank[order] = np.arange(n_i) - np.repeat(starts, counts)
        weight = 1.0 / (rank + 1.0) ** cfg.item_zipf
        cat_total = np.bincount(self._item_cat, weights=weight, minlength=n_c)
        self._within = weight / cat_total[self._item_cat]  # P(item | its category)

        # Sorted-by-category CDF for sampling an item given its category.
        self._cat_order = order
        self._cat_starts = starts
        self._cat_ends = starts + counts
        within_sorted = self._within[order]
        cdf = np.cumsum(within_sorted)
        cdf -= np.repeat(np.concatenate(([0.0], cdf[self._cat_ends[:-1] - 1])), counts)
        cdf[self._cat_ends - 1] = 1.0
        self._within_cdf_flat = cdf + self._item_cat[order]  # category c occupies (c, c + 1]

        # Prices: lognormal with a per-category offset, rounded to cents.
        cat_offset = rng.normal(0.0, cfg.price_sigma / 2.0, n_c)
        log_price = np.log(cfg.price_median) + cat_offset[self._item_cat] + rng.normal(0.0, cfg.price_sigma, n_i)
        self._prices = np.maximum(np.round(np.exp(log_price), 2), 0.5)

        # Users: Zipf activity in random rank order, Dirichlet category preferences.
        user_rank = rng.permutation(n_u)
        activity = 1.0 / (user_rank + 1.0) ** cfg.user_zipf
        self._activity = activity / activity.sum()
        self._activity_cdf = np.cumsum(self._activity)
        self._activity_cdf[-1] = 1.0
        prefs = rng.dirichlet(np.full(n_c, cfg.preference_concentration), size=n_u)
        prefs = np.maximum(prefs, 1e-300)
        self._base_prefs = prefs / prefs.sum(axis=1, keepdims=True)

        # Shift: which categories are boosted; Gumbel noise shared by pre- and post-shift favourites.
        self._boosted = np.sort(rng.permutation(n_c)[: n_c // 2]).astype(np.int64)
        # the (n_users, n_items) Gumbel draws are the generator's last: kept as its state and drawn again by blocks
        # of users when needed (the same numbers, row-major), so memory does not grow with users x items
        self._gumbel_state = rng.bit_generator.state

        width_u = len(str(max(n_u - 1, 0)))
        width_i = len(str(max(n_i - 1, 0)))
        self._user_ids = np.array([f"u{k:0{width_u}d}" for k in range(n_u)], dtype=object)
        self._item_ids = np.array([f"i{k:0{width_i}d}" for k in range(n_i)], dtype=object)

    def _shift_factor(self) -> np.ndarray:
        s = float(self.config.shift_strength)
        factor = np.full(self.config.n_categories, np.exp(-s))
        factor[self._boosted] = np.exp(s)
        return factor

    def _regime(self, post: bool) -> _Regime:
        post = bool(post) and self.config.shift_strength != 0
        cached = self._regimes.get(post)
        if cached is not None:
            return cached
        cfg = self.config
        prefs = self._base_prefs
        if post:
            prefs = prefs * self._shift_factor()
            prefs = prefs / prefs.sum(axis=1, keepdims=True)
        pref_cdf = np.cumsum(prefs, axis=1)
        pref_cdf[:, -1] = 1.0
        # Favourites: Gumbel-top-k = k draws without replacement proportional to pref[cat] * within.
        k = cfg.n_favourites
        gumbel = np.random.default_rng()
        gumbel.bit_generator.state = self._gumbel_state
        favourites = np.empty((cfg.n_users, k), dtype=np.int64)
        for lo, hi in self._user_blocks():
            with np.errstate(divide="ignore"):
                score = np.log(prefs[lo:hi, self._item_cat] * self._within) + gumbel.gumbel(size=(hi - lo, cfg.n_items))
            if k < cfg.n_items:
                top = np.argpartition(-score, k - 1, axis=1)[:, :k]
            else:
                top = np.tile(np.arange(k), (hi - lo, 1))
            top_scores = np.take_along_axis(score, top, axis=1)
            favourites[lo:hi] = np.take_along_axis(top, np.argsort(-top_scores, axis=1, kind="stable"), axis=1)

        logit0 = np.log(cfg.purchase_rate / (1.0 - cfg.purchase_rate))
        affinity_logit = logit0 + cfg.purchase_affinity * np.clip(np.log(cfg.n_categories * prefs), -3.0, 3.0)
        regime = _Regime(prefs, pref_cdf, favourites, affinity_logit, 0.0)
        mean_buy = float(self._activity @ self._buy_per_interaction(regime))
        regime = dataclasses.replace(regime, events_per_interaction=1.0 + cfg.cart_rate * (1.0 + mean_buy))
        self._regimes[post] = regime
        return regime

    def _is_post(self, day: date) -> bool:
        return _as_date(day) >= self.config.shift_date

    def _buy_per_interaction(self, regime: _Regime) -> np.ndarray:
        """Each user's purchase probability per interaction, ``sum_i item_probabilities[u, i] *
        purchase_probabilities[u, i]`` (float64 ``(n_users,)``), in O(users x (categories + favourites)).

        Off the favourites the purchase probability depends on the category only, and ``P(item | category)`` sums
        to 1 in each category, so: ``(1 - r) sum_c pref[u, c] s(a[u, c]) - (1 - r) sum_f pref[u, c_f] w_f
        s(a[u, c_f]) + sum_f (r / k + (1 - r) pref[u, c_f] w_f) s(a[u, c_f] + boost)`` with ``r`` = repeat_share,
        ``k`` favourites ``f`` of category ``c_f`` and within-category probability ``w_f``, ``s`` the sigmoid.
        """
        cfg = self.config
        sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
        r, k = cfg.repeat_share, cfg.n_favourites
        rows = np.arange(cfg.n_users)[:, None]
        fav_cat = self._item_cat[regime.favourites]
        fav_explore = regime.preferences[rows, fav_cat] * self._within[regime.favourites]
        fav_logit = regime.affinity_logit[rows, fav_cat]
        off = (1.0 - r) * ((regime.preferences * sig(regime.affinity_logit)).sum(axis=1)
                           - (fav_explore * sig(fav_logit)).sum(axis=1))
        on = ((r / k + (1.0 - r) * fav_explore) * sig(fav_logit + cfg.favourite_purchase_boost)).sum(axis=1)
        return off + on

    def _user_blocks(self, max_cells: int = 1 << 25) -> list[tuple[int, int]]:
        """User ranges ``[lo, hi)`` whose ``(hi - lo, n_items)`` float64 blocks stay under ``max_cells`` cells
        (256 MiB); one block when the whole matrix fits, as for the default shop."""
        n_u = self.config.n_users
        step = max(1, min(n_u, max_cells // max(self.config.n_items, 1)))
        return [(lo, min(lo + step, n_u)) for lo in range(0, n_u, step)]

    def _favourite_matrix(self, regime: _Regime) -> np.ndarray:
        n_u = self.config.n_users
        mat = np.zeros((n_u, self.config.n_items), dtype=np.float64)
        np.add.at(mat, (np.repeat(np.arange(n_u), self.config.n_favourites), regime.favourites.ravel()), 1.0)
        return mat

    def _item_probabilities(self, regime: _Regime) -> np.ndarray:
        cfg = self.config
        explore = regime.preferences[:, self._item_cat] * self._within
        fav = self._favourite_matrix(regime) / cfg.n_favourites
        return cfg.repeat_share * fav + (1.0 - cfg.repeat_share) * explore

    def _purchase_probabilities(self, regime: _Regime) -> np.ndarray:
        logit = regime.affinity_logit[:, self._item_cat]
        logit = logit + self.config.favourite_purchase_boost * (self._favourite_matrix(regime) > 0)
        return 1.0 / (1.0 + np.exp(-logit))

    # ------------------------------------------------------------------ public helpers
    def item_categories(self) -> np.ndarray:
        """Category of every item: int64 array of shape ``(n_items,)``, values in ``0..n_categories-1``."""
        return self._item_cat.copy()

    def item_prices(self) -> np.ndarray:
        """Unit price of every item (currency units, 2 decimals): float64 array of shape ``(n_items,)``."""
        return self._prices.copy()

    def user_ids(self) -> np.ndarray:
        """User ids ``u0000``.. (object array of str, shape ``(n_users,)``); index = row of the matrices."""
        return self._user_ids.copy()

    def item_ids(self) -> np.ndarray:
        """Item ids ``i000``.. (object array of str, shape ``(n_items,)``); index = column of the matrices."""
        return self._item_ids.copy()

    def user_activity(self) -> np.ndarray:
        """Probability that an interaction is by each user: float64, shape ``(n_users,)``, sums to 1."""
        return self._activity.copy()

    def boosted_categories(self) -> np.ndarray:
        """The ``n_categories // 2`` categories boosted by the shift (sorted int64 array)."""
        return self._boosted.copy()

    def user_preferences(self, day: date) -> np.ndarray:
        """Category preference of every user on ``day``: float64 ``(n_users, n_categories)``, rows sum to 1."""
        return self._regime(self._is_post(day)).preferences.copy()

    def favourites(self, day: date) -> np.ndarray:
        """Favourite item indices in use on ``day``: int64 ``(n_users, n_favourites)``, distinct per row."""
        return self._regime(self._is_post(day)).favourites.copy()

    def item_probabilities(self, day: date) -> np.ndarray:
        """True probability that an interaction of a user on ``day`` is with each item.

        Returns:
            float64 array of shape ``(n_users, n_items)`` (rows = :meth:`user_ids`, columns =
            :meth:`item_ids`), each row summing to 1:
            ``repeat_share * [item is a current favourite] / n_favourites
            + (1 - repeat_share) * preference[user, category(item)] * P(item | category)``.
            Every interaction (hence every ``view``) is drawn from exactly this distribution.
        """
        return self._item_probabilities(self._regime(self._is_post(day)))

    def purchase_probabilities(self, day: date) -> np.ndarray:
        """Probability that a cart of a user-item pair on ``day`` becomes a purchase.

        Returns:
            float64 ``(n_users, n_items)``: ``sigmoid(logit(purchase_rate) + purchase_affinity *
            clip(log(n_categories * preference[user, category]), -3, 3) + favourite_purchase_boost *
            [item is a current favourite])``.
        """
        return self._purchase_probabilities(self._regime(self._is_post(day)))

    def day_multiplier(self, day: date) -> float:
        """Weekday multiplier x holiday multiplier (1.0 on a plain weekday) of ``day``."""
        day = _as_date(day)
        mult = float(self.config.weekday_multipliers[day.weekday()])
        if self.config.holiday_peak:
            mult *= holiday_multiplier(day)
        return mult

    def expected_interactions(self, day: date) -> float:
        """Poisson mean of the number of interactions (= views) on ``day``."""
        regime = self._regime(self._is_post(day))
        return float(self.config.events_per_day) * self.day_multiplier(day) / regime.events_per_interaction

    def expected_events(self, day: date) -> float:
        """Expected number of events (all types) on ``day``: ``events_per_day * day_multiplier(day)``."""
        return float(self.config.events_per_day) * self.day_multiplier(day)

    def describe(self) -> dict[str, str]:
        """JSON-able description for asset metadata (source name and the main parameters)."""
        cfg = self.config
        return {
            "source": self.name,
            "seed": str(cfg.seed),
            "n_users": str(cfg.n_users),
            "n_items": str(cfg.n_items),
            "n_categories": str(cfg.n_categories),
            "events_per_day": str(cfg.events_per_day),
            "shift_date": cfg.shift_date.isoformat(),
            "shift_strength": str(cfg.shift_strength),
        }

    # ------------------------------------------------------------------ one day
    def fetch_day(self, day: date) -> DayBatch:
        """Simulate the events of UTC ``day`` (deterministic for the seed); nothing is quarantined.

        Returns:
            ``DayBatch(events=frame)``: columns ``event_id`` (``sim-YYYY-MM-DD-NNNNNN``, numbered in
            output order, at least 6 digits), ``user_id``, ``item_id``, ``event_type`` (``view``,
            ``add_to_cart``, ``purchase``), ``ts`` (``datetime64[us, UTC]`` inside the day), ``quantity``
            (int64: 1 for views/carts, 1..max_quantity for purchases), ``value`` (float64: 0.0 for views,
            unit price for carts, ``round(price * quantity, 2)`` for purchases), sorted by
            ``(ts, event_id)``.
        """
        return DayBatch(events=self.generate_day(day))

    def generate_day(self, day: date) -> pd.DataFrame:
        """The events frame of :meth:`fetch_day`."""
        day = _as_date(day)
        cfg = self.config
        regime = self._regime(self._is_post(day))
        rng = np.random.default_rng([cfg.seed, day.toordinal()])
        n = int(rng.poisson(self.expected_interactions(day)))

        # Who and what.
        users = np.minimum(np.searchsorted(self._activity_cdf, rng.random(n), side="right"), cfg.n_users - 1)
        repeat = rng.random(n) < cfg.repeat_share
        fav_slot = rng.integers(0, cfg.n_favourites, n)
        cats = (regime.pref_cdf[users] <= rng.random(n)[:, None]).sum(axis=1)
        cats = np.minimum(cats, cfg.n_categories - 1)
        pos = np.searchsorted(self._within_cdf_flat, cats + rng.random(n), side="right")
        pos = np.clip(pos, self._cat_starts[cats], self._cat_ends[cats] - 1)
        items = np.where(repeat, regime.favourites[users, fav_slot], self._cat_order[pos])

        # When: hour from the daily rhythm, uniform inside the hour (microseconds since midnight UTC).
        hour_p = np.asarray(cfg.hour_weights, dtype=np.float64)
        hour_cdf = np.cumsum(hour_p / hour_p.sum())
        hour_cdf[-1] = 1.0
        hours = np.minimum(np.searchsorted(hour_cdf, rng.random(n), side="right"), 23)
        t_view = (hours * 3600.0 + rng.random(n) * 3600.0) * 1e6

        # Funnel: view -> cart -> purchase.
        carted = np.flatnonzero(rng.random(n) < cfg.cart_rate)
        t_cart = t_view[carted] + rng.exponential(cfg.cart_delay_minutes * 60e6, carted.size)
        cu, ci = users[carted], items[carted]
        is_fav = (regime.favourites[cu] == ci[:, None]).any(axis=1)
        logit = regime.affinity_logit[cu, self._item_cat[ci]] + cfg.favourite_purchase_boost * is_fav
        bought = np.flatnonzero(rng.random(carted.size) < 1.0 / (1.0 + np.exp(-logit)))
        t_buy = t_cart[bought] + rng.exponential(cfg.purchase_delay_minutes * 60e6, bought.size)
        q_w = (1.0 - cfg.quantity_p) ** np.arange(cfg.max_quantity)
        q_cdf = np.cumsum(q_w / q_w.sum())
        q_cdf[-1] = 1.0
        qty = np.minimum(np.searchsorted(q_cdf, rng.random(bought.size), side="right"), cfg.max_quantity - 1) + 1

        # Assemble, order by (ts, interaction, funnel step) and number in that order.
        src = np.concatenate((np.arange(n), carted, carted[bought]))
        etype = np.concatenate(
            (np.zeros(n, np.int8), np.ones(carted.size, np.int8), np.full(bought.size, 2, np.int8))
        )
        t_us = np.concatenate((t_view, t_cart, t_buy))
        t_us = np.minimum(t_us.astype(np.int64), _US_PER_DAY - 1)
        quantity = np.concatenate((np.ones(n + carted.size, np.int64), qty.astype(np.int64)))
        order = np.lexsort((etype, src, t_us))
        src, etype, t_us, quantity = src[order], etype[order], t_us[order], quantity[order]
        ev_items = items[src]
        price = self._prices[ev_items]
        value = np.where(etype == 0, 0.0, np.round(price * quantity, 2))

        day_start_us = (day - _EPOCH).days * _US_PER_DAY
        ts = pd.DatetimeIndex((t_us + day_start_us).view("datetime64[us]")).tz_localize(timezone.utc)
        return pd.DataFrame(
            {
                "event_id": self._event_ids(day, t_us.size),
                "user_id": self._user_ids[users[src]],
                "item_id": self._item_ids[ev_items],
                "event_type": _EVENT_TYPE_NAMES[etype],
                "ts": ts,
                "quantity": quantity,
                "value": value.astype(np.float64),
            }
        )

    def _event_ids(self, day: date, count: int) -> np.ndarray:
        width = max(6, len(str(max(count - 1, 0))))
        table = self._number_table.get(width)
        if table is None or table.size < count:
            size = max(count, 2 * (table.size if table is not None else 0), 1024)
            table = np.array([f"{k:0{width}d}" for k in range(size)], dtype=object)
            self._number_table[width] = table
        return f"sim-{day.isoformat()}-" + table[:count]


def _as_date(day: date) -> date:
    """``day`` as a plain ``date`` (a ``datetime`` is reduced to its date; pandas Timestamps too)."""
    if isinstance(day, datetime):
        return day.date()
    return day
