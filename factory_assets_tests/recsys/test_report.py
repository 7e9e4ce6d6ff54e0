"""Tests of factory_assets.ml.recsys.report: Gini, repeat vs new shares, activity segments, the PNG plot.

The hand case (k = 2): catalogue a b c d (positions 0..3), three evaluated users

    user  training items  activity  segment  truth   top-2
    u1    a               1         1-2      {b}     a b
    u2    a b c           3         3-9      {d}     d a
    u3    b (two days)    1         1-2      {b, c}  b -    (one pad)
"""

from __future__ import annotations

import io
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from factory_assets.ml.recsys import report
from factory_assets.ml.recsys.evaluation import EvalSet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
C = 1.0 / math.log2(3)  # the NDCG discount of rank 2

EVAL = EvalSet(catalogue=np.array(["a", "b", "c", "d"]), user_ids=np.array(["u1", "u2", "u3"]), truth=[{1}, {3}, {1, 2}])
TRAIN = pd.DataFrame(
    {
        "day": ["2024-10-01", "2024-10-01", "2024-10-02", "2024-10-02", "2024-10-01", "2024-10-03", "2024-10-01"],
        "user_id": ["u1", "u2", "u2", "u2", "u3", "u3", "u9"],  # u9 is not evaluated
        "item_id": ["a", "a", "b", "c", "b", "b", "d"],
    }
)
TOP = np.array([[0, 1], [3, 0], [1, -1]])
POPULAR = np.array([[1, 0], [1, 0], [1, 0]])  # the same list for everyone


def _pairwise_gini(x) -> float:
    """Gini as the relative mean absolute difference, normalised by n / (n - 1): a second method."""
    x = [float(v) for v in x]
    n = len(x)
    return sum(abs(a - b) for a, b in itertools.product(x, x)) / (2 * n * sum(x)) * n / (n - 1)


# --------------------------------------------------------------------------- gini
def test_gini_of_known_count_vectors():
    assert report.gini(np.array([3, 3, 3, 3])) == 0.0
    assert report.gini(np.array([0, 0, 7, 0])) == pytest.approx(1.0)  # everything on one item
    # sorted 0 1 2 3: sum (2j - 5) x_j = -1 + 2 + 9 = 10, over (n - 1) * total = 3 * 6
    assert report.gini(np.array([3, 0, 2, 1])) == pytest.approx(10 / 18)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 20, size=15)
    assert report.gini(counts) == pytest.approx(_pairwise_gini(counts))


def test_gini_degenerate_and_invalid():
    assert report.gini(np.array([5])) == 0.0
    assert report.gini(np.zeros(4)) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        report.gini(np.array([1, -1]))
    with pytest.raises(ValueError, match="1-d"):
        report.gini(np.ones((2, 2)))


def test_recommendation_counts_ignore_pads_and_keep_unrecommended_items():
    np.testing.assert_array_equal(report.recommendation_counts(TOP, 4), [2, 2, 0, 1])
    with pytest.raises(ValueError, match="positions"):
        report.recommendation_counts(np.array([[4]]), 4)


# --------------------------------------------------------------------------- repeat vs new
def test_seen_items_are_distinct_training_items_of_evaluated_users():
    assert report.seen_items(TRAIN, EVAL) == [{0}, {0, 1, 2}, {1}]


def test_repeat_shares_by_hand():
    seen = [{0}, {0, 1, 2}, {1}]
    # 5 slots (u3's pad is none); repeats: u1 a, u2 a, u3 b = 3.  Hits: u1 b, u2 d, u3 b = 3, of which u3 b is seen.
    assert report.repeat_shares(TOP, seen, EVAL.truth) == (pytest.approx(3 / 5), pytest.approx(1 / 3))
    assert report.repeat_shares(np.array([[2, 3]]), [{0}], [{1}]) == (0.0, None)  # no hit: no hit share
    with pytest.raises(ValueError, match="lists"):
        report.repeat_shares(TOP, seen[:2], EVAL.truth)


def test_list_quality_of_the_hand_case():
    quality = report.list_quality(TOP, EVAL, report.seen_items(TRAIN, EVAL), k=2)
    # counts a2 b2 c0 d1, sorted 0 1 2 2: sum (2j - 5) x_j = -1 + 2 + 6 = 7, over 3 * 5
    assert quality == {
        "gini_at_2": round(7 / 15, 6),
        "repeat_share_at_2": 0.6,
        "new_share_at_2": 0.4,
        "repeat_hit_share_at_2": round(1 / 3, 6),
    }
    assert quality["gini_at_2"] == pytest.approx(_pairwise_gini([2, 2, 0, 1]), abs=1e-6)


# --------------------------------------------------------------------------- activity segments
def test_activity_segment_bin_edges():
    got = report.activity_segment(np.array([1, 2, 3, 9, 10, 29, 30, 500]))
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 2, 3, 3])
    assert [label for label, *_ in report.ACTIVITY_SEGMENTS] == ["1-2", "3-9", "10-29", "30+"]
    with pytest.raises(ValueError, match="activity"):
        report.activity_segment(np.array([0, 3]))


def test_segment_table_metrics_are_those_of_the_segment_users():
    seen = report.seen_items(TRAIN, EVAL)
    rows = report.segment_table({"model": TOP, "popularity": POPULAR}, EVAL, seen, k=2)
    assert [(r["segment"], r["min_items"], r["max_items"], r["n_users"]) for r in rows] == [
        ("1-2", 1, 2, 2), ("3-9", 3, 9, 1), ("10-29", 10, 29, 0), ("30+", 30, None, 0)
    ]
    light, regular = rows[0]["models"], rows[1]["models"]
    # segment 1-2 = u1, u3.  model: u1 hit at rank 2 of 1 relevant -> NDCG C; u3 hit at rank 1 of 2 -> 1 / (1 + C)
    assert light["model"]["ndcg_at_2"] == pytest.approx((C + 1 / (1 + C)) / 2, abs=1e-6)
    assert light["model"]["precision_at_2"] == pytest.approx(0.5)  # one hit each in 2 slots (a pad is a slot)
    assert light["model"]["recall_at_2"] == pytest.approx((1 + 1 / 2) / 2)
    assert light["model"]["map_at_2"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # u1 (1/2)/1, u3 1/2
    # popularity b a: u1 hit at rank 1 -> 1; u3 b at rank 1 of 2 relevant -> 1 / (1 + C)
    assert light["popularity"]["ndcg_at_2"] == pytest.approx((1 + 1 / (1 + C)) / 2, abs=1e-6)
    # segment 3-9 = u2 (truth d): the model's d at rank 1 is perfect, popularity has no hit
    assert regular["model"] == {"ndcg_at_2": 1.0, "precision_at_2": 0.5, "recall_at_2": 1.0, "map_at_2": 1.0}
    assert regular["popularity"] == {"ndcg_at_2": 0.0, "precision_at_2": 0.0, "recall_at_2": 0.0, "map_at_2": 0.0}
    assert rows[2]["models"] == rows[3]["models"] == {"model": None, "popularity": None}


def test_candidate_report_is_json_ready():
    out = report.candidate_report({"model": TOP}, EVAL, TRAIN, k=2)
    assert json.loads(json.dumps(out)) == out
    assert out["quality"]["model"]["repeat_share_at_2"] == 0.6 and len(out["segments"]) == 4


# --------------------------------------------------------------------------- plot
def test_ndcg_plot_is_a_png_of_the_requested_size():
    rows = report.segment_table({"model": TOP, "popularity": POPULAR}, EVAL, report.seen_items(TRAIN, EVAL), k=2)
    png = report.ndcg_by_segment_png(rows, metric="ndcg_at_2")
    assert png.startswith(PNG_SIGNATURE) and len(png) < 60_000
    assert imread(io.BytesIO(png)).shape == (350, 600, 4)  # 6 x 3.5 in at 100 dpi, RGBA
    small = report.ndcg_by_segment_png(rows, metric="ndcg_at_2", width_in=4, height_in=2, dpi=50)
    assert imread(io.BytesIO(small)).shape == (100, 200, 4)


# --------------------------------------------------------------------------- the candidate's evaluation summary
def test_candidate_evaluation_carries_the_report_without_changing_its_schema():
    from factory_assets.ml.recsys.metrics import top_k
    from factory_assets.ml.recsys.evaluation import model_scores
    from factory_assets.ml.recsys.model import ModelParams
    from factory_assets.ml.training import train_candidate
    from factory_assets_tests.recsys.test_ranker import day, synthetic

    window = synthetic()
    result = train_candidate(window, (day(0), day(27)), 7, ModelParams(factors=3, iterations=2, model_kind="blend"))
    ev = result.evaluation()
    assert json.loads(json.dumps(ev)) == ev  # what the registry and the manifest store
    assert set(ev) == {"model", "baselines", "references", "segments"}
    assert set(ev["baselines"]) == {"popularity", "repeat"} and set(ev["references"]) == {"als"}
    assert ev["model"]["ndcg_at_10"] == round(result.model_report.ndcg, 6)
    top = top_k(model_scores(result.eval_model, result.eval_set), 10)
    counts = np.bincount(top[top >= 0], minlength=len(result.eval_set.catalogue))
    assert ev["model"]["gini_at_10"] == pytest.approx(_pairwise_gini(counts), abs=1e-6)
    assert ev["model"]["new_share_at_10"] == pytest.approx(1 - ev["model"]["repeat_share_at_10"], abs=1e-6)
    assert ev["model"]["cold_start_share"] == 0.0  # the synthetic shop has no newcomer
    # the segments partition the evaluated users: their user-weighted NDCG is each model's overall NDCG
    segments = ev["segments"]
    n = sum(s["n_users"] for s in segments)
    assert n == ev["model"]["n_users"]
    for name, overall in (("candidate", ev["model"]), *ev["baselines"].items()):
        weighted = sum(s["n_users"] * s["models"][name]["ndcg_at_10"] for s in segments if s["n_users"]) / n
        assert weighted == pytest.approx(overall["ndcg_at_10"], abs=1e-5)
        assert 0.0 <= overall["gini_at_10"] <= 1.0


def test_report_markdown_embeds_the_plot_and_tabulates_the_segments():
    import base64

    from factory_assets.ml.reports import evaluation_report_markdown

    quality = {"gini_at_10": 0.5, "repeat_share_at_10": 0.25, "new_share_at_10": 0.75, "repeat_hit_share_at_10": None}
    metrics = {"ndcg_at_10": 1.0, "precision_at_10": 0.5, "recall_at_10": 1.0, "map_at_10": 0.25}
    segments = [
        {"segment": "1-2", "n_users": 2, "models": {"candidate": metrics, "popularity": dict.fromkeys(metrics, 0.0)}},
        {"segment": "30+", "n_users": 0, "models": {"candidate": None, "popularity": None}},
    ]
    evaluation = {
        "model": {**quality, "cold_start_users": 0, "cold_start_share": 0.0, "cold_start_ndcg_at_10": None},
        "baselines": {"popularity": quality},
        "segments": segments,
    }
    png = report.ndcg_by_segment_png(segments, width_in=3, height_in=2, dpi=40)
    md = evaluation_report_markdown(evaluation, png)
    encoded = md.split("(data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(encoded) == png
    lines = md.splitlines()
    assert "| **candidate** | 0.5000 | 0.2500 | 0.7500 |  |" in lines
    assert "| 1-2 | 2 | candidate | 1.0000 | 0.5000 | 1.0000 | 0.2500 |" in lines
    assert "| 1-2 | 2 | popularity | 0.0000 | 0.0000 | 0.0000 | 0.0000 |" in lines
    assert "| 30+ | 0 | - |  |  |  |  |" in lines  # an empty segment is one line
    assert [line for line in lines if line.startswith("Cold start:")] == [
        "Cold start: 0 test-day converters without any training row (share 0.0000 of them and the evaluated users)."
    ]
