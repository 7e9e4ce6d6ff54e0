"""Shared fixtures: a small simulated shop ingested once per session into a temporary FACTORY_HOME."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from factory_assets_tests.helpers import FIRST_DAY, days, ingest, small_factory  # noqa: E402


@pytest.fixture(scope="session")
def ingested_home(tmp_path_factory) -> Path:
    """A FACTORY_HOME with 36 days (2024-10-01 .. 11-05) of the small shop ingested; copy before mutating."""
    home = tmp_path_factory.mktemp("ingested")
    ingest(small_factory(home), days(FIRST_DAY, 36))
    return home


@pytest.fixture
def home_copy(ingested_home, tmp_path) -> Path:
    """A private copy of ``ingested_home`` for tests that change it."""
    target = tmp_path / "home"
    shutil.copytree(ingested_home, target)
    return target
