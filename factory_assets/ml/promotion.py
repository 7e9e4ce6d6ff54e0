"""Promotion gates as pure functions: each returns a verdict with the numbers behind it.

The Dagster wiring turns each into a blocking asset check on ``candidate_model``; ``served_model`` only
materialises when all of them pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from scipy import stats

from factory_assets.ml.recsys.metrics import top_k
from factory_assets.ml.recsys.model import BlendModel

BEATS_BASELINE = "beats_baseline"
NOT_WORSE_THAN_CHAMPION = "not_worse_than_champion"
SAFE_TO_SERVE = "safe_to_serve"
GATES: tuple[str, ...] = (BEATS_BASELINE, NOT_WORSE_THAN_CHAMPION, SAFE_TO_SERVE)
PROMOTE, SHADOW, REJECT, BACKTEST = "promote", "shadow", "reject", "backtest"


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    reason: str
    metadata: dict = field(default_factory=dict)


def decide(gates: list[GateResult], backtest_of: int | None = None) -> tuple[str, str]:
    """The verdict of a candidate from its gates, and the reason.

    - ``promote``: every gate passed (``served_model`` will move the champion alias);
    - ``backtest``: every gate passed, but the candidate's day is older than the champion's (``backtest_of``,
      the champion's version): evaluated and recorded, never promoted over a newer champion;
    - ``shadow``: safe to serve and better than the baselines, but not clearly as good as the champion: it
      is scored on live traffic beside the champion (the ``shadow`` alias) until it proves itself;
    - ``reject``: unsafe to serve or not better than the baselines.
    """
    failed = {g.name: g for g in gates if not g.passed}
    if not failed and backtest_of is not None:
        return BACKTEST, f"all gates passed; a backtest (older than champion v{backtest_of}): recorded, not promoted"
    if not failed:
        return PROMOTE, "all gates passed"
    reason = "; ".join(f"{g.name}: {g.reason}" for g in failed.values())
    if set(failed) == {NOT_WORSE_THAN_CHAMPION}:
        return SHADOW, reason
    return REJECT, reason


def beats_baseline(model_ndcg: float, baseline_ndcg: dict[str, float], margin: float) -> GateResult:
    """Pass when ``model_ndcg >= (1 + margin) * max(baseline_ndcg.values())`` and the model scores above 0."""
    best_name = max(baseline_ndcg, key=baseline_ndcg.get)
    best = baseline_ndcg[best_name]
    required = (1.0 + margin) * best
    passed = bool(np.isfinite(model_ndcg)) and model_ndcg >= required and model_ndcg > 0
    verdict = "beats" if passed else "does not beat"
    return GateResult(
        BEATS_BASELINE,
        passed,
        f"NDCG@10 {model_ndcg:.4f} {verdict} the best baseline ({best_name} {best:.4f}) by the margin {margin:.0%} "
        f"(needs >= {required:.4f})",
        {"model_ndcg_at_10": model_ndcg, "best_baseline": best_name, "best_baseline_ndcg_at_10": best, "required": required},
    )


def paired_bootstrap_ci(
    candidate: np.ndarray, champion: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile bootstrap confidence interval of the paired difference ``candidate - champion``.

    Args:
        candidate, champion: per-user metric values (e.g. NDCG@10), float arrays of the same length, the same
            users in the same order.
    Returns:
        ``(mean_difference, low, high)``.  Users are resampled with replacement (Efron & Tibshirani 1993,
        *An Introduction to the Bootstrap*, ch. 13), via ``scipy.stats.bootstrap`` with the percentile method.
    Raises:
        ValueError: on different lengths or fewer than two users.
    """
    candidate, champion = np.asarray(candidate, float), np.asarray(champion, float)
    if candidate.shape != champion.shape or candidate.ndim != 1 or len(candidate) < 2:
        raise ValueError(f"need two paired 1-d samples of >= 2 users, got {candidate.shape} and {champion.shape}")
    diff = candidate - champion
    if np.all(diff == diff[0]):  # a degenerate distribution: every resample has the same mean
        return float(diff[0]), float(diff[0]), float(diff[0])
    result = stats.bootstrap(
        (diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(diff.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)


def champion_not_comparable(
    champion_version: int, champion_day: date, candidate_day: date, champion_trained_on: tuple[date, date],
    test_days: tuple[date, date],
) -> str | None:
    """Why the champion must not be compared with a candidate on its test days, or None when it may.

    - the candidate's day is older than the champion's (a backtest): the champion knows the candidate's future;
    - the champion's evaluation model trained on any of the candidate's test days (inclusive ``(first, last)``
      UTC days): it would be scored on interactions it has seen (leakage; it won by 0.05-0.23 NDCG@10 on reruns).

    Both happen together on a rerun of older days; a forward candidate never overlaps with the same window and
    holdout (the champion's evaluation model ends ``holdout_days`` before its own day).
    """
    overlap = champion_trained_on[0] <= test_days[1] and test_days[0] <= champion_trained_on[1]
    leak = (f"champion v{champion_version}'s evaluation model trained on {champion_trained_on[0]}..{champion_trained_on[1]}, "
            f"which overlaps this candidate's test days {test_days[0]}..{test_days[1]}")
    if candidate_day < champion_day:
        return (f"backtest: the candidate's day {candidate_day} is older than champion v{champion_version}'s "
                f"({champion_day})" + (f"; {leak}" if overlap else "") + "; the champion is not compared")
    if overlap:
        return f"{leak}: comparing would reward it for days it has seen; the champion is not compared"
    return None


def not_worse_than_champion(
    candidate_per_user: np.ndarray,
    champion_per_user: np.ndarray | None,
    tolerance: float,
    champion_version: int | None,
    champion_must_go: str | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    not_compared: str | None = None,
) -> GateResult:
    """Pass when there is no champion, or the paired bootstrap interval of the per-user NDCG@10 difference
    (candidate - champion, same users and days) lies above ``-tolerance``.

    ``champion_must_go`` (a reason, e.g. the champion was trained on erased data) waives the comparison;
    ``not_compared`` (a reason from :func:`champion_not_comparable`) skips it: the gate passes and says why,
    with ``compared: False`` in its metadata.
    """
    if not_compared:
        return GateResult(NOT_WORSE_THAN_CHAMPION, True, f"not compared: {not_compared}",
                          {"compared": False, "champion_version": champion_version})
    if champion_per_user is None:
        return GateResult(NOT_WORSE_THAN_CHAMPION, True, "no champion yet: the first passing candidate is served", {})
    mean, low, high = paired_bootstrap_ci(candidate_per_user, champion_per_user, confidence, n_resamples)
    metadata = {
        "model_ndcg_at_10": float(np.mean(candidate_per_user)), "champion_ndcg_at_10": float(np.mean(champion_per_user)),
        "champion_version": champion_version, "ndcg_difference": mean, "ci_low": low, "ci_high": high,
        "confidence": confidence, "tolerance": tolerance,
    }
    if champion_must_go:
        return GateResult(NOT_WORSE_THAN_CHAMPION, True, f"champion v{champion_version} must be replaced: {champion_must_go}", metadata)
    passed = bool(np.isfinite(low)) and low >= -tolerance
    return GateResult(
        NOT_WORSE_THAN_CHAMPION,
        passed,
        f"NDCG@10 difference vs champion v{champion_version}: {mean:+.4f}, {confidence:.0%} CI [{low:+.4f}, {high:+.4f}] "
        f"on {len(candidate_per_user)} users ({'clears' if passed else 'does not clear'} -{tolerance:.4f})",
        metadata,
    )


def safe_to_serve(
    model: BlendModel,
    artefact_path: Path,
    known_users: set[str],
    known_items: set[str],
    *,
    max_artefact_mb: float,
    max_recommend_ms: float,
    sample_users: int,
    k: int = 10,
    seed: int = 0,
) -> GateResult:
    """Serving smoke test on the artefact as loaded from disk.

    Checks: every factor, history and popularity value is finite; ids are unique, non-empty and all occur in
    the training window (``known_users``/``known_items``); each of ``sample_users`` users (seeded sample) gets
    a full top-``k`` of distinct items; the file is at most ``max_artefact_mb`` MiB; the p99 latency of a
    one-user top-``k`` request is at most ``max_recommend_ms`` milliseconds.
    """
    problems: list[str] = []
    arrays = {
        "user_factors": model.user_factors,
        "item_factors": model.item_factors,
        "history": model.history.data,
        "popularity": model.popularity,
    }
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            problems.append(f"{name} has {int((~np.isfinite(array)).sum())} non-finite values")
    for name, ids, known in (("user", model.user_ids, known_users), ("item", model.item_ids, known_items)):
        if len(ids) == 0:
            problems.append(f"no {name} ids")
        if len(set(ids.tolist())) != len(ids) or any(len(i) == 0 for i in ids.tolist()):
            problems.append(f"{name} ids are not unique and non-empty")
        unknown = set(ids.tolist()) - known
        if unknown:
            problems.append(f"{len(unknown)} {name} ids not in the training window, e.g. {sorted(unknown)[:3]}")
    size_mb = artefact_path.stat().st_size / 2**20
    if size_mb > max_artefact_mb:
        problems.append(f"artefact is {size_mb:.1f} MiB > {max_artefact_mb} MiB")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(model.user_ids), size=min(sample_users, len(model.user_ids)), replace=False) if len(model.user_ids) else np.array([], int)
    latencies = []
    short = 0
    for row in rows:
        started = time.perf_counter()
        best = top_k(model.scores(np.array([row])), k)[0]
        latencies.append((time.perf_counter() - started) * 1000)
        valid = best[best >= 0]
        if len(valid) < min(k, len(model.item_ids)) or len(set(valid.tolist())) != len(valid):
            short += 1
    if short:
        problems.append(f"{short} of {len(rows)} sampled users got fewer than {k} distinct items")
    p99 = float(np.percentile(latencies, 99)) if latencies else 0.0
    if p99 > max_recommend_ms:
        problems.append(f"p99 recommend latency {p99:.2f} ms > {max_recommend_ms} ms")
    passed = not problems
    return GateResult(
        SAFE_TO_SERVE,
        passed,
        "safe to serve" if passed else "; ".join(problems),
        {"artefact_mb": round(size_mb, 3), "p99_recommend_ms": round(p99, 3), "sampled_users": int(len(rows))},
    )
