"""Promotion gates as pure functions: each returns a verdict with the numbers behind it.

The Dagster wiring turns each into a blocking asset check on ``candidate_model``; ``served_model`` only
materialises when all of them pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factory_assets.recsys.metrics import top_k
from factory_assets.recsys.model import BlendModel

BEATS_BASELINE = "beats_baseline"
NOT_WORSE_THAN_CHAMPION = "not_worse_than_champion"
SAFE_TO_SERVE = "safe_to_serve"
GATES: tuple[str, ...] = (BEATS_BASELINE, NOT_WORSE_THAN_CHAMPION, SAFE_TO_SERVE)


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    reason: str
    metadata: dict = field(default_factory=dict)


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


def not_worse_than_champion(
    model_ndcg: float,
    champion_ndcg: float | None,
    tolerance: float,
    champion_version: int | None,
    champion_must_go: str | None = None,
) -> GateResult:
    """Pass when there is no champion, or ``model_ndcg >= champion_ndcg - tolerance`` on the same eval set.

    ``champion_must_go`` (a reason, e.g. the champion was trained on erased data) waives the comparison.
    """
    if champion_ndcg is None:
        return GateResult(NOT_WORSE_THAN_CHAMPION, True, "no champion yet: the first passing candidate is served", {})
    if champion_must_go:
        return GateResult(
            NOT_WORSE_THAN_CHAMPION, True, f"champion v{champion_version} must be replaced: {champion_must_go}",
            {"champion_ndcg_at_10": champion_ndcg, "champion_version": champion_version},
        )
    required = champion_ndcg - tolerance
    passed = bool(np.isfinite(model_ndcg)) and model_ndcg >= required
    return GateResult(
        NOT_WORSE_THAN_CHAMPION,
        passed,
        f"NDCG@10 {model_ndcg:.4f} vs champion v{champion_version} {champion_ndcg:.4f} on the same users and days "
        f"(tolerance {tolerance:.4f}, needs >= {required:.4f})",
        {"model_ndcg_at_10": model_ndcg, "champion_ndcg_at_10": champion_ndcg, "champion_version": champion_version, "required": required},
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
