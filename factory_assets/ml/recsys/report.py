"""Beyond-accuracy report of one model's top-k lists: concentration, repeat vs new items, activity segments.

Everything is computed on the evaluation protocol of ``recsys.evaluation`` (the evaluated users, the
training-day catalogue, the test-day truth) from top-k matrices of catalogue positions, so the candidate and
the baselines are described on exactly the same users.

Definitions (``top[u]`` = user ``u``'s top-k, ``-1`` pads are no recommendation; ``seen[u]`` = the catalogue
items ``u`` has any ``user_item_daily`` row for in the training days: viewed, carted or bought):

- ``gini_at_k``: Gini coefficient of the recommendation counts of every catalogue item (an item never
  recommended counts 0); 0 = every item recommended equally often, 1 = every slot holds the same item.
  See :func:`gini`.
- ``repeat_share_at_k``: recommended slots holding an item of ``seen[u]`` / all recommended slots;
  ``new_share_at_k`` = 1 - that (items new to the user).
- ``repeat_hit_share_at_k``: hits (slots whose item is in the truth) on ``seen[u]`` items / all hits; None
  when the lists hold no hit.
- activity segments: a user's activity = ``len(seen[u])``, the number of distinct items they interacted with
  in the training days, binned by :data:`ACTIVITY_SEGMENTS`.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from factory_assets.ml.recsys.evaluation import EvalSet
from factory_assets.ml.recsys.metrics import ranking_metrics

# (label, lowest, highest or None) of distinct training-day items per user; every evaluated user has >= 1
# (they converted in the training days).  Roughly x3 per bin: one-off, occasional, regular, heavy users.
ACTIVITY_SEGMENTS: tuple[tuple[str, int, int | None], ...] = (
    ("1-2", 1, 2),
    ("3-9", 3, 9),
    ("10-29", 10, 29),
    ("30+", 30, None),
)
SEGMENT_METRICS: tuple[str, ...] = ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10")


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts, normalised to [0, 1].

    With the counts sorted ascending ``x_1 <= ... <= x_n``::

        G = sum_j (2j - n - 1) * x_j / ((n - 1) * sum_j x_j)

    the item-distribution Gini index of Shani & Gunawardana, "Evaluating Recommendation Systems",
    *Recommender Systems Handbook* (2011), section 8.3.3.2 (the sorted-cumulative form; equal to the
    relative mean absolute difference ``sum_ij |x_i - x_j| / (2 n sum x)`` times ``n / (n - 1)``).
    0 when all counts are equal, 1 when a single item takes everything.

    Args:
        counts: 1-d array ``(n,)`` of counts (any real dtype), one per catalogue item, zeros included.
    Returns:
        G as a float; 0.0 when ``n < 2`` or all counts are 0 (nothing is concentrated).
    Raises:
        ValueError: for a negative or non-finite count, or an array that is not 1-d.
    """
    x = np.asarray(counts, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"counts must be 1-d, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("counts must be finite and non-negative")
    n, total = len(x), float(x.sum())
    if n < 2 or total == 0.0:
        return 0.0
    j = np.arange(1, n + 1)
    return float(((2 * j - n - 1) * np.sort(x)).sum() / ((n - 1) * total))


def recommendation_counts(top: np.ndarray, n_items: int) -> np.ndarray:
    """How often each catalogue item appears in the lists.

    Args:
        top: int array ``(n_users, k)`` of catalogue positions in ``[0, n_items)``, ``-1`` pads ignored.
    Returns:
        int64 array ``(n_items,)``.
    Raises:
        ValueError: for a position outside ``[-1, n_items)``.
    """
    top = np.asarray(top, dtype=np.int64)
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise ValueError(f"positions must lie in [-1, {n_items}), got {top.min()}..{top.max()}")
    return np.bincount(top[top >= 0], minlength=n_items).astype(np.int64)


def seen_items(train: pd.DataFrame, eval_set: EvalSet) -> list[set[int]]:
    """Per evaluated user (in ``eval_set.user_ids`` order), the catalogue positions of the items they have any
    training row for.

    Args:
        train: training-day ``user_item_daily`` rows (needs ``user_id`` and ``item_id``).
    """
    positions = {item: i for i, item in enumerate(eval_set.catalogue.tolist())}
    users = set(eval_set.user_ids.tolist())
    ids = train[["user_id", "item_id"]]  # only the two columns: at 1M events/day a full copy is ~0.5 GiB
    rows = ids[ids["user_id"].astype(str).isin(users)]
    grouped = rows.groupby(rows["user_id"].astype(str))["item_id"].agg(
        lambda s: {positions[i] for i in s.astype(str) if i in positions}
    )
    return [set(grouped.get(u, set())) for u in eval_set.user_ids.tolist()]


def repeat_shares(top: np.ndarray, seen: list[set[int]], truth: list[set[int]]) -> tuple[float, float | None]:
    """``(repeat share of recommended slots, repeat share of hits)``, see the module docstring.

    Args:
        top: int array ``(n_users, k)`` of catalogue positions, ``-1`` pads are not slots.
        seen: per row, the user's training-day items; truth: per row, the relevant test-day items.
    Returns:
        Fractions in [0, 1]; the slot share is 0.0 with no slot at all, the hit share None with no hit.
    Raises:
        ValueError: on mismatched lengths.
    """
    if not len(top) == len(seen) == len(truth):
        raise ValueError(f"{len(top)} lists, {len(seen)} seen sets, {len(truth)} truth sets")
    slots = repeats = hits = repeat_hits = 0
    for row, own, relevant in zip(np.asarray(top), seen, truth):
        items = [int(i) for i in row if i >= 0]
        slots += len(items)
        repeats += sum(i in own for i in items)
        hit = [i for i in items if i in relevant]
        hits += len(hit)
        repeat_hits += sum(i in own for i in hit)
    return (repeats / slots if slots else 0.0), (repeat_hits / hits if hits else None)


def list_quality(top: np.ndarray, eval_set: EvalSet, seen: list[set[int]], k: int = 10) -> dict[str, float | None]:
    """``gini_at_k``, ``repeat_share_at_k``, ``new_share_at_k`` and ``repeat_hit_share_at_k`` of one model's
    lists (rounded to 6 decimals, plain Python numbers: JSON-ready)."""
    top = np.asarray(top)[:, :k]
    repeat, repeat_hits = repeat_shares(top, seen, eval_set.truth)
    return {
        f"gini_at_{k}": round(gini(recommendation_counts(top, len(eval_set.catalogue))), 6),
        f"repeat_share_at_{k}": round(repeat, 6),
        f"new_share_at_{k}": round(1.0 - repeat, 6),
        f"repeat_hit_share_at_{k}": None if repeat_hits is None else round(repeat_hits, 6),
    }


def activity_segment(n_items: np.ndarray) -> np.ndarray:
    """Index into :data:`ACTIVITY_SEGMENTS` of each user's activity.

    Args:
        n_items: int array ``(n_users,)`` of distinct training-day items per user.
    Returns:
        int64 array ``(n_users,)``.
    Raises:
        ValueError: for an activity below the first bin's lowest value (0: such a user cannot be evaluated).
    """
    n_items = np.asarray(n_items, dtype=np.int64)
    if n_items.size and n_items.min() < ACTIVITY_SEGMENTS[0][1]:
        raise ValueError(f"activity below {ACTIVITY_SEGMENTS[0][1]}: {n_items.min()}")
    lows = np.array([low for _, low, _ in ACTIVITY_SEGMENTS])
    return (np.searchsorted(lows, n_items, side="right") - 1).astype(np.int64)


def segment_table(tops: dict[str, np.ndarray], eval_set: EvalSet, seen: list[set[int]], k: int = 10) -> list[dict]:
    """Ranking metrics per activity segment, for every model in ``tops``.

    Args:
        tops: model name -> int array ``(n_users, >= k)`` of catalogue positions, rows in ``eval_set`` order.
        seen: :func:`seen_items` of the same users.
    Returns:
        One row per :data:`ACTIVITY_SEGMENTS` entry, in order: ``{"segment", "min_items", "max_items" (None =
        open), "n_users", "models": {name: {ndcg_at_k, precision_at_k, recall_at_k, map_at_k} or None when the
        segment is empty}}``.  The metrics are :func:`metrics.ranking_metrics` on that segment's users only.
    """
    segment = activity_segment(np.array([len(s) for s in seen], dtype=np.int64))
    rows = []
    for index, (label, low, high) in enumerate(ACTIVITY_SEGMENTS):
        members = np.flatnonzero(segment == index)
        truth = [eval_set.truth[u] for u in members]
        models = {}
        for name, top in tops.items():
            if len(members) == 0:
                models[name] = None
                continue
            report = ranking_metrics(np.asarray(top)[members], truth, len(eval_set.catalogue), k).as_dict(k)
            models[name] = {m: report[m] for m in (f"ndcg_at_{k}", f"precision_at_{k}", f"recall_at_{k}", f"map_at_{k}")}
        rows.append({"segment": label, "min_items": low, "max_items": high, "n_users": int(len(members)), "models": models})
    return rows


def ndcg_by_segment_png(segments: list[dict], metric: str = "ndcg_at_10", width_in: float = 6.0,
                        height_in: float = 3.5, dpi: int = 100) -> bytes:
    """A grouped bar chart of ``metric`` per activity segment and model, as PNG bytes.

    Args:
        segments: :func:`segment_table` rows (models absent or None in a segment are drawn as no bar).
        width_in, height_in: figure size in inches; dpi: pixels per inch (the PNG is ``round(width_in * dpi)``
            by ``round(height_in * dpi)`` pixels, RGBA).
    Uses matplotlib's object-oriented API with the Agg canvas: no pyplot, no global backend state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(name for row in segments for name in row["models"]))
    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = np.arange(len(segments))
    width = 0.8 / max(len(names), 1)
    highest = 0.0
    for i, name in enumerate(names):
        values = [np.nan if row["models"].get(name) is None else row["models"][name][metric] for row in segments]
        highest = max([highest, *(v for v in values if np.isfinite(v))])
        axes.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    axes.set_ylim(0.0, 1.3 * highest if highest > 0 else 1.0)  # headroom for the legend
    axes.set_xticks(x, [f"{row['segment']}\n(n={row['n_users']})" for row in segments])
    axes.set_xlabel("distinct items in the training days")
    label = metric.replace("_at_", "@").replace("ndcg", "NDCG")
    axes.set_ylabel(label)
    axes.set_title(f"{label} by user activity segment", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", ncol=max(len(names), 1), frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def candidate_report(tops: dict[str, np.ndarray], eval_set: EvalSet, train: pd.DataFrame, k: int = 10) -> dict:
    """The whole report for the models of ``tops`` (model name -> top-k matrix, rows in ``eval_set`` order).

    Returns:
        ``{"quality": {name: list_quality(...)}, "segments": segment_table(...)}``, JSON-ready.
    """
    seen = seen_items(train, eval_set)
    return {
        "quality": {name: list_quality(top, eval_set, seen, k) for name, top in tops.items()},
        "segments": segment_table(tops, eval_set, seen, k),
    }
