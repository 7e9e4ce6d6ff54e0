"""``GET /metrics`` parsed with prometheus_client's own parser: counts worked out by hand, one registry per app."""

from __future__ import annotations

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from factory_assets.serving.metrics import LATENCY_BUCKETS, Metrics
from factory_assets.serving.scorer import ModelHolder
from factory_assets_tests.service.conftest import hand_model, publish

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROUTE = "/recommendations/{user_id}"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition, via prometheus_client's parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_parse_and_count_the_requests_made(home, make_client):
    publish(home, hand_model(), 3)  # users u0..u5
    client = make_client()
    for _ in range(3):
        assert client.get("/recommendations/u0").status_code == 200      # the fast path: 3 lists, no fallback
    assert client.get("/recommendations/new-user").status_code == 200    # an unknown user: 1 fallback list
    for _ in range(2):
        assert client.get("/recommendations/u0?k=0").status_code == 422  # refused by FastAPI: no list served
    assert client.get("/healthz").status_code == 200
    client.get("/metrics")  # counted once answered: the next scrape sees it, itself not yet
    r = client.get("/metrics")
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    got = samples(r.text)

    def requests(method: str, route: str, status: int) -> float:
        return got[("factory_serve_requests_total",
                    frozenset({"method": method, "route": route, "status": str(status)}.items()))]

    assert requests("GET", ROUTE, 200) == 4
    assert requests("GET", ROUTE, 422) == 2
    assert requests("GET", "/healthz", 200) == 1
    assert requests("GET", "/metrics", 200) == 1
    assert got[("factory_serve_request_duration_seconds_count", frozenset({"route": ROUTE}.items()))] == 6
    assert got[("factory_serve_request_duration_seconds_bucket", frozenset({"route": ROUTE, "le": "+Inf"}.items()))] == 6
    assert {dict(labels)["le"] for name, labels in got if name == "factory_serve_request_duration_seconds_bucket"} == \
        {*(str(b) for b in LATENCY_BUCKETS), "+Inf"}
    assert got[("factory_serve_recommendations_total", frozenset())] == 4
    assert got[("factory_serve_fallback_total", frozenset())] == 1
    assert got[("factory_serve_fallback_rate", frozenset())] == 0.25
    assert got[("factory_serve_model_version", frozenset({"role": "champion"}.items()))] == 3
    assert got[("factory_serve_model_version", frozenset({"role": "shadow"}.items()))] == 0
    assert not [name for name, _ in got if name.endswith("_created")]  # the series the service always exposed


def test_each_app_counts_in_its_own_registry(home, make_client):
    publish(home, hand_model(), 1)
    first, second = make_client(), make_client()  # two services in one process: no shared or colliding metrics
    for _ in range(5):
        first.get("/recommendations/u1")
    second.get("/recommendations/u1")
    count = ("factory_serve_recommendations_total", frozenset())
    assert samples(first.get("/metrics").text)[count] == 5
    assert samples(second.get("/metrics").text)[count] == 1


def test_metrics_without_requests_and_bump_names():
    metrics = Metrics()
    got = samples(metrics.render(ModelHolder()))
    assert got[("factory_serve_fallback_rate", frozenset())] == 0  # no lists yet: 0, not a division by zero
    assert got[("factory_serve_alias_missing", frozenset({"role": "champion"}.items()))] == 0
    metrics.bump("reload_failures", 2)
    metrics.set_alias_missing("champion", True)
    got = samples(metrics.render(ModelHolder()))
    assert got[("factory_serve_reload_failures_total", frozenset())] == 2
    assert got[("factory_serve_alias_missing", frozenset({"role": "champion"}.items()))] == 1
    with pytest.raises(AttributeError):
        metrics.bump("no_such_counter")
