"""A multi-week simulator run that exercises the registry: promotions, a shadow, a rejection and a rollback.

    python scripts/registry_demo.py [--home DIR]

Uses a small simulated shop (400 users, 120 items) so it takes about two minutes on 2 cores, runs every asset
through Dagster in-process, then rolls the champion back and prints the registry history.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import date, timedelta
from pathlib import Path

import duckdb
from dagster import materialize

from factory_assets.definitions import DATAOPS_ASSETS, MLOPS_ASSETS
from factory_assets.ml import registry
from factory_assets.resources import FactoryResource, PromotionPolicy, SimulatorOptions

SHOP = SimulatorOptions(n_users=400, n_items=120, events_per_day=3000, seed=11, shift_date="2024-11-11")
INGEST = [k.to_user_string() for a in DATAOPS_ASSETS for k in a.keys]
TRAIN = ["training_window", "candidate_model", "served_model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", default=None)
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="registry-demo-"))
    assets = [*DATAOPS_ASSETS, *MLOPS_ASSETS]
    first = date(2024, 10, 14)
    plain = FactoryResource(home=str(home), source="simulator", source_path="", simulator=SHOP)
    for i in range(42):
        materialize(assets, selection=INGEST, partition_key=(first + timedelta(days=i)).isoformat(), resources={"factory": plain})
    policies = {  # day offset -> policy: a demanding margin on one day produces a rejection
        34: PromotionPolicy(baseline_margin=10.0),
    }
    for i in range(27, 42):
        factory = FactoryResource(home=str(home), source="simulator", source_path="", simulator=SHOP,
                                  policy=policies.get(i, PromotionPolicy()))
        materialize(assets, selection=TRAIN, partition_key=(first + timedelta(days=i)).isoformat(),
                    resources={"factory": factory}, raise_on_error=False)
    aliases = home / "simulator" / "aliases"
    with duckdb.connect(str(home / "simulator" / "warehouse.duckdb")) as con:
        registry.rollback(con, aliases, "demo: bad recommendations reported", actor="lead")
        print(registry.versions(con)[["version", "partition_day", "status"]].to_string(index=False))
        print()
        print(registry.history(con)[["version", "action", "from_status", "to_status", "reason"]].to_string(index=False, max_colwidth=90))
    print(f"\nhome: {home}")


if __name__ == "__main__":
    main()
