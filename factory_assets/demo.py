"""The adaptation experiment: the factory vs a static model vs the simulator's oracle under a preference shift.

``factory demo`` simulates eight weeks of the default shop (:data:`START` .. :data:`END`) with the
simulator's preference shift on :data:`SHIFT_DATE` (week six), then runs the factory through Dagster
exactly as ``factory run --backtest`` does: one ``daily_ingest`` run per day (raw events, features, drift
verdict) and one ``daily_training`` run per day with a full window (candidate, blocking gates, promotion).
Training day D reads only days <= D, so running the days in this order gives the same models as the daemon
running them one day at a time.  The candidate is the blend (``model_kind="blend"``, about 2 s a fit; the
learned ranker takes ~40 s and would not fit 29 daily trainings into the 15-minute budget).

Three recommenders are then scored on every day D from the first served day on (``date`` = the day whose
purchases are predicted):

``factory``  the champion at the start of D: the last version promoted from a candidate of a day < D;
``static``   the champion at the start of :data:`SHIFT_DATE`, frozen ("shipping the product");
``oracle``   the simulator's true purchase propensity on D (``item_probabilities(D) *
             purchase_probabilities(D)``: the interaction distribution times the chance that a cart is bought),
             the ceiling no model trained on events can beat in expectation.

Every model ranks all items (no filters, no exclusion of past purchases) for the same users: the day's
purchasers; truth = the distinct items each bought that day.  ``hit_rate_at_10`` = share of those users with
at least one bought item in their top 10; ``ndcg_at_10`` with binary relevance (``recsys.metrics``).
``drift`` is the day's ``behaviour_drift`` record (PSI / JS of item popularity and categories);
``promoted`` is true when the factory's model of D differs from that of D-1 (a promotion at D's start).

Outputs (per strength, under ``<home>/demo/``): ``adaptation-<s>.json`` (the summary below),
``adaptation-<s>.csv`` (one row a day) and ``adaptation-<s>.png`` (hit-rate@10 over days, shift and
promotions marked, drift below); the ``adaptation_demo`` asset shows them in the Dagster UI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

from factory_assets.ml.recsys.artefact import atomic_write_bytes, load_manifest_model
from factory_assets.ml.recsys.metrics import ranking_metrics
from factory_assets.ml.recsys.model import BlendModel
from factory_assets.data.sources.simulator import ShopSimulator

START, END, SHIFT_DATE = date(2024, 10, 6), date(2024, 11, 30), date(2024, 11, 11)
DEFAULT_STRENGTH = 1.5  # the simulator's default shift strength
SWEEP = (0.75, 1.5, 3.0)
K = 10
MARKER = ".factory-demo"  # a demo home is only ever deleted when it carries this marker

log = logging.getLogger("factory.demo")


@dataclass(frozen=True)
class DemoConfig:
    """One experiment: the simulated range, the shift and the candidate model.

    ``simulator``: extra ``SimulatorOptions`` fields (e.g. a smaller shop for tests); the shift's date and
    strength always come from ``shift_date`` / ``strength``.
    """

    strength: float = DEFAULT_STRENGTH
    start: date = START
    end: date = END
    shift_date: date = SHIFT_DATE
    model_kind: str = "blend"
    simulator: tuple[tuple[str, object], ...] = ()

    def simulator_options(self) -> dict:
        return {**dict(self.simulator), "shift_strength": self.strength, "shift_date": self.shift_date.isoformat()}

    def shop(self) -> ShopSimulator:
        options = self.simulator_options()
        options["shift_date"] = self.shift_date
        return ShopSimulator(**options)


@dataclass(frozen=True)
class Served:
    """A registered version and the first day it served (the day after its candidate's partition)."""

    version: int
    from_day: date
    model: BlendModel


def demo_home(base: Path, strength: float) -> Path:
    """The FACTORY_HOME of one strength's run: ``<base>/demo/shift-<s>``."""
    return base.expanduser().resolve() / "demo" / f"shift-{strength:g}"


def _fresh(home: Path) -> None:
    """Empty ``home`` for a new run; refuse to delete a directory that is not a demo home."""
    if home.exists():
        if not (home / MARKER).exists():
            raise SystemExit(f"factory demo: {home} exists and is not a demo home (no {MARKER}); choose another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("created by factory demo; deleted by the next run\n", encoding="utf-8")


def run_factory(home: Path, config: DemoConfig) -> dict:
    """Run the factory (ingest every day, train every day with a full window) on a fresh ``home``; its summary."""
    from factory_assets import cli

    _fresh(home)
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home / "dagster")  # one instance per demo home
    try:
        args = argparse.Namespace(source="simulator", path=None, start=config.start.isoformat(),
                                  end=config.end.isoformat(), backtest=True, home=str(home), json=True)
        return cli.run(args, simulator=config.simulator_options(), candidate={"model_kind": config.model_kind})
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def served_models(reg) -> list[Served]:
    """Every promoted version in promotion order, with the first day it served and its verified artefact."""
    from factory_assets.ml import registry

    events = registry.history(reg)
    promoted = events[events["action"] == "promoted"]
    out = []
    for version in promoted["version"].astype(int):
        row = registry.version_row(reg, version)
        model = load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
        out.append(Served(version, pd.Timestamp(row["partition_day"]).date() + timedelta(days=1), model))
    return out


def champion_on(served: list[Served], day: date) -> Served | None:
    """The model serving at the start of ``day``: the last promotion whose first day is <= ``day``."""
    live = [s for s in served if s.from_day <= day]
    return live[-1] if live else None


def purchases(con, day: date) -> pd.Series:
    """user id -> set of item ids bought on ``day`` (raw events, partition ``day``)."""
    frame = con.execute(
        "SELECT user_id, item_id FROM raw_events WHERE partition_day = ? AND event_type = 'purchase'", [day]
    ).df()
    return frame.groupby("user_id")["item_id"].agg(lambda s: set(s.astype(str))).sort_index()


def _top_items(scores: np.ndarray, item_ids: np.ndarray, k: int = K) -> np.ndarray:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.asarray(item_ids, dtype=object)[order]


def model_top(model: BlendModel, users: list[str], k: int = K) -> np.ndarray:
    """Top-``k`` item ids ``(len(users), k)`` of a registered model (unknown users: its popularity fallback)."""
    return _top_items(model.scores(model.user_rows(np.asarray(users, dtype=str))), model.item_ids, k)


def oracle_top(sim: ShopSimulator, day: date, users: list[str], k: int = K) -> np.ndarray:
    """Top-``k`` items by the simulator's true purchase propensity of ``day`` for each user."""
    propensity = sim.item_probabilities(day) * sim.purchase_probabilities(day)
    rows = pd.Index(sim.user_ids()).get_indexer(users)
    return _top_items(propensity[rows], sim.item_ids(), k)


def score(top: np.ndarray, truth: list[set[str]], catalogue: pd.Index) -> dict:
    """``hit_rate_at_10`` and ``ndcg_at_10`` of top-k item ids against each user's bought items."""
    rec = catalogue.get_indexer(top.ravel()).reshape(top.shape)
    sets = [set(catalogue.get_indexer(sorted(t)).tolist()) - {-1} for t in truth]
    hits = np.array([bool(set(row.tolist()) & t) for row, t in zip(rec, sets)])
    report = ranking_metrics(rec, sets, len(catalogue), K)
    return {"hit_rate_at_10": round(float(hits.mean()), 6), "ndcg_at_10": round(report.ndcg, 6)}


def drift_rows(con) -> dict[date, dict]:
    from factory_assets.feature_store.contract import DRIFT_HISTORY

    frame = con.execute(f"SELECT partition_day, psi_items, psi_categories, js_distance_categories, drifted FROM {DRIFT_HISTORY}").df()
    return {
        pd.Timestamp(r.partition_day).date(): {
            "drifted": bool(r.drifted), "psi_items": _round(r.psi_items), "psi_categories": _round(r.psi_categories),
            "js_distance_categories": _round(r.js_distance_categories),
        }
        for r in frame.itertuples()
    }


def _round(value) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 4)


def evaluate_days(home: Path, config: DemoConfig) -> list[dict]:
    """One row per day from the first served day to ``config.end`` (see the module docstring)."""
    from factory_assets.platform import settings

    sim = config.shop()
    catalogue = pd.Index(sim.item_ids().astype(str))
    from factory_assets.ml import registry

    layout = settings.HomeLayout(home.resolve(), "simulator")
    with registry.connect(registry.default_url(layout.root)) as reg:
        served = served_models(reg)
    from factory_assets.feature_store.resource import FeatureStoreResource

    # read-only, whichever storage the home holds (FACTORY_STORAGE=parquet makes the demo's homes Parquet lakes)
    with FeatureStoreResource(home=str(layout.home), source=layout.source).connect() as con:
        static = champion_on(served, config.shift_date)
        drift = drift_rows(con)
        rows, previous = [], None
        day = served[0].from_day if served else config.end + timedelta(days=1)
        while day <= config.end:
            bought = purchases(con, day)
            users, truth = list(bought.index.astype(str)), list(bought)
            factory = champion_on(served, day)
            row = {"date": day.isoformat(), "n_users": len(users),
                   "factory": score(model_top(factory.model, users), truth, catalogue) | {"model_version": factory.version},
                   "static": None, "oracle": score(oracle_top(sim, day, users), truth, catalogue),
                   "drift": drift.get(day), "promoted": previous is not None and factory.version != previous}
            if static is not None and day >= config.shift_date:
                row["static"] = score(model_top(static.model, users), truth, catalogue) | {"model_version": static.version}
            rows.append(row)
            previous = factory.version
            day += timedelta(days=1)
        return rows


def summarise(rows: list[dict], shift_date: date = SHIFT_DATE) -> dict:
    """The target's figures: factory and static hit-rate@10 as shares of the oracle's (None where undefined)."""
    after = [r for r in rows if r["date"] > shift_date.isoformat()]
    before = [r for r in rows if r["date"] < shift_date.isoformat()]

    def ratio(row: dict, who: str) -> float | None:
        if row[who] is None or not row["oracle"]["hit_rate_at_10"]:
            return None
        return round(row[who]["hit_rate_at_10"] / row["oracle"]["hit_rate_at_10"], 4)

    first = after[0] if after else None
    static_after = [ratio(r, "static") for r in after if ratio(r, "static") is not None]
    return {
        "first_day_after_shift": None if first is None else first["date"],
        "factory_vs_oracle_first_day_after": None if first is None else ratio(first, "factory"),
        "static_vs_oracle_max_after": max(static_after) if static_after else None,
        "factory_vs_oracle_mean_before_shift": _mean([ratio(r, "factory") for r in before]),
        "factory_vs_oracle_mean_after": _mean([ratio(r, "factory") for r in after]),
        "static_vs_oracle_mean_after": _mean(static_after),
        "target": {"factory_first_day_after": 0.9, "static_after_below": 0.5},
        "promotions": [r["date"] for r in rows if r["promoted"]],
        "drifted_days": [r["date"] for r in rows if r["drift"] and r["drift"]["drifted"]],
    }


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def plot_png(rows: list[dict], strength: float, shift_date: date = SHIFT_DATE) -> bytes:
    """PNG (about 9 x 5.5 in, 100 dpi): hit-rate@10 of the three models per day, shift and promotions marked,
    the drift PSI of item categories below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    days = pd.to_datetime([r["date"] for r in rows])
    fig = Figure(figsize=(9, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for who, style in (("oracle", "k--"), ("factory", "C0-"), ("static", "C3-")):
        values = [np.nan if r[who] is None else r[who]["hit_rate_at_10"] for r in rows]
        top.plot(days, values, style, label=who, linewidth=1.6)
    promoted = [d for d, r in zip(days, rows) if r["promoted"]]
    top.plot(promoted, [r["factory"]["hit_rate_at_10"] for r in rows if r["promoted"]], "C0^", markersize=5,
             label="promotion")
    for axis in (top, bottom):
        axis.axvline(pd.Timestamp(shift_date), color="grey", linestyle=":", linewidth=1.2)
    top.set_ylabel("hit-rate@10")
    top.set_ylim(0, 1)
    top.set_title(f"Factory vs static model vs oracle, preference shift {shift_date} (strength {strength:g})")
    top.legend(loc="lower left", fontsize=8, ncol=4)
    top.grid(alpha=0.3)
    psi = [np.nan if not r["drift"] or r["drift"]["psi_categories"] is None else r["drift"]["psi_categories"] for r in rows]
    bottom.bar(days, psi, color=["C1" if r["drift"] and r["drift"]["drifted"] else "C7" for r in rows], width=0.8)
    bottom.set_ylabel("PSI categories")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(out_dir: Path, result: dict) -> dict[str, Path]:
    """``adaptation-<s>.json`` / ``.csv`` / ``.png`` under ``out_dir``, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    strength = result["shift_strength"]
    flat = pd.json_normalize(result["days"], sep=".")
    paths = {kind: out_dir / f"adaptation-{strength:g}.{kind}" for kind in ("json", "csv", "png")}
    atomic_write_bytes(paths["json"], json.dumps(result, indent=2).encode())
    atomic_write_bytes(paths["csv"], flat.to_csv(index=False).encode())
    atomic_write_bytes(paths["png"], plot_png(result["days"], strength, date.fromisoformat(result["shift_date"])))
    return paths


def run_strength(base: Path, config: DemoConfig) -> dict:
    """The whole experiment for one configuration; returns the ``--json`` document.

    Raises:
        RuntimeError: if any Dagster run of the factory failed (the document would describe a broken factory).
    """
    started = time.perf_counter()
    home = demo_home(base, config.strength)
    summary = run_factory(home, config)
    failed = [r for r in summary["runs"] if not r["success"]]
    if failed:
        raise RuntimeError(f"factory demo: {len(failed)} runs failed, first {failed[0]} (see the UI on {home / 'dagster'})")
    days = evaluate_days(home, config)
    result = {"shift_date": config.shift_date.isoformat(), "shift_strength": config.strength,
              "model_kind": config.model_kind, "home": str(home), "days": days,
              "summary": summarise(days, config.shift_date), "elapsed_s": round(time.perf_counter() - started, 1)}
    paths = write_outputs(demo_home(base, config.strength).parent, result)
    result["outputs"] = {k: str(v) for k, v in paths.items()}
    return result
