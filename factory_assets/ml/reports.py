"""Markdown renderings of evaluations and promotion verdicts for the Dagster UI."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from factory_assets.ml.promotion import GateResult

_COLUMNS = ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "coverage", "gini_at_10", "repeat_share_at_10", "n_users")
_QUALITY = ("gini_at_10", "repeat_share_at_10", "new_share_at_10", "repeat_hit_share_at_10")
_SEGMENT_METRICS = ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10")


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
    return "\n".join(head) + "\n" + evaluation_markdown(evaluation, champion, gates)  # a blank line between blocks


def segments_markdown(segments: Sequence[dict]) -> str:
    """The activity-segment table (``recsys.report.segment_table`` rows): one line per segment and model."""
    lines = [
        "| activity (distinct training items) | users | model | " + " | ".join(_SEGMENT_METRICS) + " |",
        "|---|---:|---|" + "---:|" * len(_SEGMENT_METRICS),
    ]
    for row in segments:
        if row["n_users"] == 0:  # one line says the segment is empty
            lines.append(f"| {row['segment']} | 0 | - | " + " | ".join("" for _ in _SEGMENT_METRICS) + " |")
            continue
        for name, metrics in row["models"].items():
            cells = [_fmt(None if metrics is None else metrics.get(c)) for c in _SEGMENT_METRICS]
            lines.append(f"| {row['segment']} | {row['n_users']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluation_report_markdown(evaluation: dict, plot_png: bytes) -> str:
    """The per-candidate evaluation report: the plot embedded as a base64 ``data:`` PNG, the concentration and
    repeat-vs-new shares of the candidate and the baselines, the cold-start share and the segment table."""
    model = evaluation["model"]
    rows = [("**candidate**", model)] + [(f"baseline: {n}", m) for n, m in evaluation["baselines"].items()]
    lines = [
        f"![NDCG@10 by activity segment](data:image/png;base64,{base64.b64encode(plot_png).decode('ascii')})",
        "",
        "| model | " + " | ".join(_QUALITY) + " |",
        "|---|" + "---:|" * len(_QUALITY),
    ]
    lines += [f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in _QUALITY) + " |" for name, m in rows]
    n_cold = model.get("cold_start_users") or 0
    lines += [
        "",
        f"Cold start: {n_cold} test-day converters without any training row (share "
        f"{_fmt(model.get('cold_start_share'))} of them and the evaluated users)"
        + (f", NDCG@10 {_fmt(model.get('cold_start_ndcg_at_10'))} with the fallback." if n_cold else "."),
        "",
        segments_markdown(evaluation.get("segments", [])),
    ]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
