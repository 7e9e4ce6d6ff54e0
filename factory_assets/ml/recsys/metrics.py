"""Top-k ranking metrics with binary relevance.

Definitions (for one user with recommended list ``r_1..r_k`` and relevant set ``T``; ``rel_j = 1`` when
``r_j`` is in ``T``), following Manning, Raghavan & Schütze, *Introduction to Information Retrieval*
(2008), ch. 8, and Järvelin & Kekäläinen (2002) for NDCG:

- precision@k = hits / k
- recall@k    = hits / |T|
- NDCG@k      = DCG / IDCG, DCG = sum_j rel_j / log2(j + 1), IDCG = the DCG of min(|T|, k) hits at the top
- MAP@k       = (1 / min(|T|, k)) * sum_j rel_j * precision@j   (averaged over users)
- coverage    = distinct recommended items / catalogue size (once for the whole list set)

``implicit.evaluation.ranking_metrics_at_k`` computes the same NDCG and MAP (its "precision" is
hits / min(|T|, k)); the tests use it as a second method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10")


@dataclass(frozen=True)
class RankingReport:
    """Mean metrics plus the per-user NDCG (for paired comparisons), over ``n_users`` users."""

    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    n_users: int
    per_user_ndcg: np.ndarray

    def as_dict(self, k: int = 10) -> dict[str, float | int]:
        return {
            f"precision_at_{k}": round(self.precision, 6),
            f"recall_at_{k}": round(self.recall, 6),
            f"ndcg_at_{k}": round(self.ndcg, 6),
            f"map_at_{k}": round(self.map, 6),
            "coverage": round(self.coverage, 6),
            "n_users": self.n_users,
        }


def ranking_metrics(recommended: np.ndarray, truth: list[set[int]], n_items: int, k: int = 10) -> RankingReport:
    """Mean precision/recall/NDCG/MAP@k and catalogue coverage.

    Args:
        recommended: int array ``(n_users, >= k)`` of item indexes, best first; ``-1`` pads short lists
            (a pad is never relevant).  Only the first ``k`` columns are used.
        truth: one set of relevant item indexes per row of ``recommended``; users with an empty set must
            be filtered out by the caller.
        n_items: catalogue size for coverage.
        k: cut-off.

    Raises:
        ValueError: on mismatched lengths, an empty truth set, or ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(recommended) != len(truth):
        raise ValueError(f"{len(recommended)} recommendation lists but {len(truth)} truth sets")
    if any(len(t) == 0 for t in truth):
        raise ValueError("every evaluated user needs at least one relevant item")
    n = len(truth)
    if n == 0:
        return RankingReport(0.0, 0.0, 0.0, 0.0, 0.0, 0, np.zeros(0))
    top = np.asarray(recommended)[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision = np.empty(n)
    recall = np.empty(n)
    ndcg = np.empty(n)
    ap = np.empty(n)
    for u, (row, relevant) in enumerate(zip(top, truth)):
        rel = np.array([item >= 0 and int(item) in relevant for item in row], dtype=float)
        hits = rel.sum()
        ideal = min(len(relevant), k)
        precision[u] = hits / k
        recall[u] = hits / len(relevant)
        ndcg[u] = float(rel @ discounts[: len(rel)]) / float(discounts[:ideal].sum())
        precision_at_j = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        ap[u] = float((precision_at_j * rel).sum()) / ideal
    shown = np.unique(top[top >= 0])
    return RankingReport(
        precision=float(precision.mean()),
        recall=float(recall.mean()),
        ndcg=float(ndcg.mean()),
        map=float(ap.mean()),
        coverage=float(len(shown) / n_items) if n_items else 0.0,
        n_users=n,
        per_user_ndcg=ndcg,
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest scores per row, best first; ``-inf`` entries become ``-1`` pads.

    Args:
        scores: float array ``(n_users, n_items)``; ``-inf`` marks items that must not be shown.
    Returns:
        int64 array ``(n_users, min(k, n_items))``.  Ties break towards the lower item index (stable).
    """
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best_scores = np.take_along_axis(scores, best, axis=1)
    return np.where(np.isneginf(best_scores), -1, best).astype(np.int64)
