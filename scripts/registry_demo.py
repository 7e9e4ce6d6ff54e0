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

from dagster import materialize

from factory_assets.definitions import DATAOPS_ASSETS, MLOPS_ASSETS
from factory_assets.ml import registry
from factory_assets.ml.models_cli import rollback_champion
from factory_assets.resources import Factory, PromotionPolicy, SimulatorOptions

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
    plain = Factory(home=str(home), source="simulator", source_path="", simulator=SHOP)
    for i in range(42):
        materialize(assets, selection=INGEST, partition_key=(first + timedelta(days=i)).isoformat(), resources=plain.resources())
    policies = {  # day offset -> policy: a demanding margin on one day produces a rejection
        34: PromotionPolicy(baseline_margin=10.0),
    }
    for i in range(27, 42):
        factory = Factory(home=str(home), source="simulator", source_path="", simulator=SHOP,
                                  policy=policies.get(i, PromotionPolicy()))
        materialize(assets, selection=TRAIN, partition_key=(first + timedelta(days=i)).isoformat(),
                    resources=factory.resources(), raise_on_error=False)
    layout = plain.layout
    # a rollback is a served_model run (the only writer of the champion alias), as `factory models rollback` does
    rollback_champion(layout, "demo: bad recommendations reported", actor="lead")
    with registry.connect(registry.default_url(layout.root)) as reg:
        print(registry.versions(reg)[["version", "partition_day", "status"]].to_string(index=False))
        print()
        print(registry.history(reg)[["version", "action", "from_status", "to_status", "reason"]].to_string(index=False, max_colwidth=90))
    print(f"\nhome: {home}")


if __name__ == "__main__":
    main()
