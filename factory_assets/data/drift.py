"""Behaviour drift between one day and a reference window: population stability index and Jensen-Shannon.

Pure functions (no Dagster, no I/O): the ``behaviour_drift`` asset (:mod:`factory_assets.data.defs.monitoring`)
reads daily counts with one SQL query over ``item_daily`` and hands them to :func:`assess`.

Distributions compared
----------------------
Both distributions weight an item by its *distinct users* of the day (``item_daily.n_users``), which is less
clustered than raw event counts (one user's view, cart and purchase of the same item are one observation).

``items``
    item popularity, binned as the reference window's :data:`TOP_ITEMS` most popular items plus one "other"
    bin (every remaining item, and items never seen in the reference).  Binning matters: with one bin per
    item the sampling noise alone gives PSI ~0.05-0.10 and a JS distance ~0.09 on a normal day of the
    default simulated shop (800 items, ~11k user-item pairs a day), i.e. right at the thresholds below;
    with the top-50 bins a normal day stays below PSI 0.04 / JS 0.07 while the simulator's preference shift
    gives PSI 0.3-0.6 / JS 0.19-0.27 (measured on the default and the test shops, Oct-Nov 2024).
``categories``
    the same weights summed per item category, when the source knows categories (the simulator does; see
    :func:`factory_assets.data.defs.monitoring.item_category_map` for the fallback of other sources).  A normal day:
    PSI < 0.01, JS < 0.03; the shift day: PSI ~0.9, JS ~0.32.

Metrics
-------
* ``psi`` -- population stability index ``sum((c - r) * ln(c / r))`` over the bins, proportions floored
  at :data:`PSI_EPSILON` (a zero bin would make it infinite) and renormalised.
* ``js_distance`` -- Jensen-Shannon distance, the square root of the Jensen-Shannon divergence with
  natural logarithms (scipy's ``scipy.spatial.distance.jensenshannon`` convention), in ``[0, sqrt(ln 2)]``;
  ``js_divergence`` is reported too (its square).

Thresholds and their sources
----------------------------
* :data:`PSI_THRESHOLD` = 0.25: the usual reading of PSI in credit scoring (< 0.1 no significant change,
  0.1-0.25 moderate, > 0.25 a significant shift that calls for action; N. Siddiqi, *Credit Risk
  Scorecards*, Wiley 2006; discussed statistically in B. Yurdakul, *Statistical Properties of Population
  Stability Index*, PhD thesis, Western Michigan University 2018).
* :data:`JS_DISTANCE_THRESHOLD` = 0.1: Evidently's default drift threshold for its Jensen-Shannon distance
  test (docs.evidentlyai.com, "Data drift algorithm": for reference data of more than 1000 observations,
  categorical columns use Jensen-Shannon with threshold 0.1).

A day *drifts* when any metric of any distribution is above its threshold.  A day without a reference
(nothing in the window yet) or with fewer than :data:`MIN_OBSERVATIONS` observations gets no verdict
(``drifted`` is False, ``reason`` says why): too little data is not evidence of drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

DRIFT_CODE_VERSION = "1"
TOP_ITEMS = 50
PSI_EPSILON = 1e-4
PSI_THRESHOLD = 0.25
JS_DISTANCE_THRESHOLD = 0.1
MIN_OBSERVATIONS = 100  # distinct user-item pairs on the day (and in the reference)
OTHER = "__other__"


def _proportions(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("counts must be a non-empty 1-d array")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("counts must be finite and non-negative")
    total = counts.sum()
    if total <= 0:
        raise ValueError("counts must not all be zero")
    return counts / total


def psi(current: np.ndarray, reference: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``current`` against ``reference`` (counts or proportions, same bins).

    Raises:
        ValueError: on shapes that differ, negative or non-finite values, or an all-zero side.
    """
    c, r = _proportions(current), _proportions(reference)
    if c.shape != r.shape:
        raise ValueError(f"bins differ: {c.shape} vs {r.shape}")
    c, r = np.maximum(c, epsilon), np.maximum(r, epsilon)
    c, r = c / c.sum(), r / r.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def js_divergence(current: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log): ``(KL(c||m) + KL(r||m)) / 2`` with ``m = (c + r) / 2``."""
    c, r = _proportions(current), _proportions(reference)
    if c.shape != r.shape:
        raise ValueError(f"bins differ: {c.shape} vs {r.shape}")
    m = (c + r) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    return max(0.0, (kl(c) + kl(r)) / 2)


def js_distance(current: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance: the square root of :func:`js_divergence` (scipy's convention)."""
    return math.sqrt(js_divergence(current, reference))


@dataclass(frozen=True)
class DistributionDrift:
    """Drift of one distribution (``items`` or ``categories``)."""

    name: str
    bins: int
    psi: float
    js_distance: float

    @property
    def js_divergence(self) -> float:
        return self.js_distance**2

    @property
    def drifted(self) -> bool:
        return self.psi > PSI_THRESHOLD or self.js_distance > JS_DISTANCE_THRESHOLD

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return {
            "name": self.name, "bins": self.bins, "psi": round(self.psi, 6),
            "js_distance": round(self.js_distance, 6), "js_divergence": round(self.js_divergence, 6),
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class DriftReport:
    """The verdict of one day: per-distribution metrics, whether it drifted, and why."""

    distributions: tuple[DistributionDrift, ...]
    current_observations: float
    reference_observations: float
    reason: str
    thresholds: Mapping[str, float] = field(
        default_factory=lambda: {"psi": PSI_THRESHOLD, "js_distance": JS_DISTANCE_THRESHOLD}
    )

    @property
    def drifted(self) -> bool:
        return any(d.drifted for d in self.distributions)

    def metric(self, distribution: str, name: str) -> float | None:
        """One metric (``psi``, ``js_distance``, ``js_divergence``) of one distribution, or None."""
        for d in self.distributions:
            if d.name == distribution:
                return float(getattr(d, name))
        return None


def bin_items(current: Mapping[str, float], reference: Mapping[str, float], top: int = TOP_ITEMS) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The reference's ``top`` items (by count, ties by id) plus :data:`OTHER`; counts of both sides per bin."""
    ranked = sorted(((float(v), k) for k, v in reference.items() if v > 0), key=lambda t: (-t[0], t[1]))
    keep = [k for _, k in ranked[:top]]
    kept = set(keep)
    labels = [*keep, OTHER]
    cur = [float(current.get(k, 0.0)) for k in keep] + [sum(float(v) for k, v in current.items() if k not in kept)]
    ref = [float(reference.get(k, 0.0)) for k in keep] + [sum(float(v) for k, v in reference.items() if k not in kept)]
    return labels, np.array(cur), np.array(ref)


def bin_categories(
    current: Mapping[str, float], reference: Mapping[str, float], categories: Mapping[str, str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Counts per category (items without a category go to :data:`OTHER`), both sides on the same bins."""
    cur: dict[str, float] = {}
    ref: dict[str, float] = {}
    for side, out in ((current, cur), (reference, ref)):
        for item, v in side.items():
            key = str(categories.get(item, OTHER))
            out[key] = out.get(key, 0.0) + float(v)
    labels = sorted(set(cur) | set(ref))
    return labels, np.array([cur.get(k, 0.0) for k in labels]), np.array([ref.get(k, 0.0) for k in labels])


def _distribution(name: str, bins: tuple[list[str], np.ndarray, np.ndarray]) -> DistributionDrift:
    labels, cur, ref = bins
    return DistributionDrift(name=name, bins=len(labels), psi=psi(cur, ref), js_distance=js_distance(cur, ref))


def assess(
    current: Mapping[str, float],
    reference: Mapping[str, float],
    categories: Mapping[str, str] | None = None,
    top: int = TOP_ITEMS,
    min_observations: float = MIN_OBSERVATIONS,
) -> DriftReport:
    """Compare one day's per-item counts with the reference window's.

    Args:
        current: item id -> weight on the day (distinct users).
        reference: item id -> weight summed over the reference window.
        categories: item id -> category, or None when the source has no categories (items only).
    """
    n_cur = float(sum(v for v in current.values() if v > 0))
    n_ref = float(sum(v for v in reference.values() if v > 0))
    if n_ref <= 0:
        return DriftReport((), n_cur, n_ref, "no reference window yet: no verdict")
    if n_cur < min_observations or n_ref < min_observations:
        return DriftReport((), n_cur, n_ref, f"fewer than {min_observations:g} observations: no verdict")
    dists = [_distribution("items", bin_items(current, reference, top))]
    if categories:
        dists.append(_distribution("categories", bin_categories(current, reference, categories)))
    above = [
        f"{d.name} {metric} {value:.3f} > {limit:g}"
        for d in dists
        for metric, value, limit in (("psi", d.psi, PSI_THRESHOLD), ("js_distance", d.js_distance, JS_DISTANCE_THRESHOLD))
        if value > limit
    ]
    reason = "; ".join(above) if above else "all metrics within thresholds"
    if not categories:
        reason += " (no item categories from this source: item popularity only)"
    return DriftReport(tuple(dists), n_cur, n_ref, reason)
