"""Hand-built models published under a temporary FACTORY_HOME, and a service app around them."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

# anyio's pytest plugin marks anyio for pytest's assertion rewriting, so a module of it imported for the first time
# inside the TestClient's request thread is compiled there, while other threads compile too; CPython 3.11.7 can
# then fail with "SystemError: AST constructor recursion depth mismatch" (seen once in CI, serving static files).
# Import the lazily loaded file module here, in the main thread, once.
import anyio._core._fileio  # noqa: F401,E402
import numpy as np
import pytest
import scipy.sparse as sp

from factory_assets.ml.recsys.artefact import atomic_write_bytes, save_model, write_manifest
from factory_assets.ml.recsys.model import BlendModel, ModelParams

SOURCE = "simulator"
TOKEN = "s3cret-token"


def hand_model(seed: int = 0, n_users: int = 6, n_items: int = 8, factors: int = 3, als_weight: float = 1.0) -> BlendModel:
    """Users ``u0..``, items ``i0..``; user ``u0`` bought ``i0`` (twice) and ``i3``."""
    rng = np.random.default_rng(seed)
    hist = np.zeros((n_users, n_items), dtype=np.float32)
    hist[0, 0], hist[0, 3], hist[1, 5] = 2.0, 1.0, 1.0
    return BlendModel(
        user_ids=np.asarray(sorted(f"u{i}" for i in range(n_users))),  # the factory keeps ids sorted
        item_ids=np.asarray(sorted(f"i{i}" for i in range(n_items))),
        user_factors=rng.normal(size=(n_users, factors)).astype(np.float32),
        item_factors=rng.normal(size=(n_items, factors)).astype(np.float32),
        history=sp.csr_matrix(hist),
        popularity=np.arange(n_items, 0, -1).astype(np.float32),  # i0 most popular
        als_weight=als_weight,
        params=ModelParams(als_weight=als_weight),
    )


def hand_ranker_model(seed: int = 0, n_users: int = 6, n_items: int = 8, n_candidates: int = 2) -> BlendModel:
    """:func:`hand_model` as a two-stage learned-ranker model (the factory's default kind), seeded.

    Sources: ``u0`` interacted with ``i0`` and ``i3``, ``u1`` with ``i5`` (recency 0.5, one conversion day
    each); co-purchase neighbours ``i0 <-> i3`` (0.8) and ``i3 -> i6`` (0.4); converters = 8 - item index.
    Ranker: logistic-regression coefficients ~ N(0, 1) (seeded), no standardisation.  With
    ``n_candidates = 2`` a user has only a few candidates, so lists longer than that continue with the
    non-candidates (score ``log1p(popularity) - 1e6``, popularity order: ``i0`` first).
    """
    from factory_assets.ml.recsys.candidates import SourceArrays
    from factory_assets.ml.recsys.ranker import FEATURES, LinearRanker, RankerPart

    base = hand_model(seed=seed, n_users=n_users, n_items=n_items)
    seen = np.zeros((n_users, n_items), dtype=np.float32)
    seen[0, 0], seen[0, 3], seen[1, 5] = 0.5, 0.5, 0.5
    neighbours = np.zeros((n_items, n_items), dtype=np.float32)
    neighbours[0, 3], neighbours[3, 0], neighbours[3, 6] = 0.8, 0.8, 0.4
    converters = np.arange(n_items, 0, -1).astype(np.float32)
    sources = SourceArrays(
        recency=sp.csr_matrix(seen), converters=converters, converters_7d=converters / 2, converters_prev_7d=converters / 4,
        neighbours=sp.csr_matrix(neighbours), days_count=sp.csr_matrix((seen > 0).astype(np.float32)),
        item_repeat_rate=np.full(n_items, 0.2, dtype=np.float32), user_days=np.ones(n_users, dtype=np.float32),
    )
    f = len(FEATURES)
    rng = np.random.default_rng(100 + seed)
    linear = LinearRanker(coef=rng.normal(size=f), intercept=0.5, mean=np.zeros(f), scale=np.ones(f))
    return replace(base, ranker=RankerPart(sources=sources, linear=linear, n_candidates=n_candidates), als_weight=0.0,
                   params=ModelParams(als_weight=0.0, n_candidates=n_candidates))


def publish(home: Path, model: BlendModel, version: int, alias: str = "champion") -> dict:
    """Save ``model`` content-addressed with a manifest, and point ``alias`` at it (atomically)."""
    root = Path(home) / SOURCE
    models = root / "artefacts" / "models"
    models.mkdir(parents=True, exist_ok=True)
    path, digest = save_model(model, models)
    manifest = {"format": "factory_assets.manifest/1", "version_hint": version,
                "artefacts": {"served": {"file": path.name, "sha256": digest}}}
    manifest_path, manifest_sha = write_manifest(manifest, models)
    pointer = {"alias": alias, "version": version, "path": str(manifest_path), "sha256": manifest_sha}
    (root / "aliases").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / "aliases" / f"{alias}.json", json.dumps(pointer).encode())
    return pointer


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def make_client(home):
    """``make_client(**config)`` -> a started TestClient (lifespan run); all are closed after the test."""
    with warnings.catch_warnings():  # starlette's notice that it prefers httpx2 (httpx is what dagster pins)
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from factory_assets.serving.app import ServiceConfig, create_app

    clients = []

    def make(**overrides):
        values = {"home": home, "source": SOURCE, "admin_token": TOKEN, "watch": False, "flush_interval_s": 60.0, "log_process": False,
                  "precompute_process": False}
        values.update(overrides)
        client = TestClient(create_app(ServiceConfig(**values)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
