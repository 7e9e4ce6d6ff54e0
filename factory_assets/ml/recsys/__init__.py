"""Pure recommender code: interaction matrices, ALS + history blend, baselines, metrics, artefacts."""
