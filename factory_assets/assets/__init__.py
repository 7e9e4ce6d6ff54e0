"""Thin Dagster wiring, one module per stage: raw -> features -> models -> serving."""
