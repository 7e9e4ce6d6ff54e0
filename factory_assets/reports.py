"""Markdown renderings of evaluations and promotion verdicts for the Dagster UI."""

from __future__ import annotations

from collections.abc import Sequence

from factory_assets.promotion import GateResult

_COLUMNS = ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "coverage", "n_users")


def evaluation_markdown(evaluation: dict, champion: dict | None, gates: Sequence[GateResult]) -> str:
    """A metrics table (candidate, champion, baselines, references) and the gate verdicts."""
    rows = [("**candidate**", evaluation["model"])]
    if champion is not None:
        rows.append((f"champion v{champion['version']}", champion))
    rows += [(f"baseline: {n}", m) for n, m in evaluation["baselines"].items()]
    rows += [(f"reference: {n}", m) for n, m in evaluation.get("references", {}).items()]
    lines = [
        f"Held-out days {evaluation['model']['test_days'][0]} .. {evaluation['model']['test_days'][1]}, "
        f"trained on {evaluation['model']['train_days'][0]} .. {evaluation['model']['train_days'][1]}.",
        "",
        "| model | " + " | ".join(_COLUMNS) + " |",
        "|---|" + "---:|" * len(_COLUMNS),
    ]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(metrics.get(c)) for c in _COLUMNS) + " |")
    verdict = "PROMOTABLE" if all(g.passed for g in gates) else "REJECTED"
    lines += ["", f"**Verdict: {verdict}**", ""]
    lines += [f"- {'✅' if g.passed else '❌'} `{g.name}`: {g.reason}" for g in gates]
    return "\n".join(lines)


def decision_markdown(
    day, verdict: str, reason: str, evaluation: dict, champion: dict | None, gates: Sequence[GateResult], policy: dict
) -> str:
    """The promotion decision record: verdict, reason, thresholds, and the evaluation table."""
    head = [
        f"## Promotion decision for {day}: **{verdict.upper()}**",
        "",
        f"{reason}",
        "",
        "Thresholds: " + ", ".join(f"`{k}` = {v}" for k, v in sorted(policy.items())),
        "",
    ]
    return "\n".join(head) + evaluation_markdown(evaluation, champion, gates)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
