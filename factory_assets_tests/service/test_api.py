"""The service's HTTP API through FastAPI's TestClient, against hand-built models."""

from __future__ import annotations

import numpy as np
import pytest

from factory_assets.ml.recsys.metrics import top_k
from factory_assets.serving.app import MAX_BATCH, MAX_BODY_BYTES, MAX_K
from factory_assets.serving.scorer import ItemFilter, LoadedModel
from factory_assets_tests.service.conftest import TOKEN, hand_model, publish

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def expected(model, user: str, k: int) -> list[tuple[str, float]]:
    rows = model.user_rows([user])
    scores = model.scores(rows)
    idx = top_k(scores, k)[0]
    return [(str(model.item_ids[i]), float(scores[0, i])) for i in idx if i >= 0]


def items(body) -> list[tuple[str, float]]:
    return [(x["item_id"], x["score"]) for x in body["items"]]


def test_loaded_model_scores_equal_blend_model_scores():
    model = hand_model(seed=3, n_users=20, n_items=30)
    loaded = LoadedModel(model, 1, "x" * 64, "m.json")
    rows = np.array([0, 1, 5, -1, 19, -1])
    np.testing.assert_allclose(loaded.scores(rows), model.scores(rows), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("user", ["u0", "u1", "u4"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_matches_the_hand_built_model(home, make_client, user, k):
    model = hand_model()
    publish(home, model, 1)
    body = make_client().get(f"/recommendations/{user}", params={"k": k}).json()
    assert set(body) == {"user_id", "items", "model_version", "fallback"}
    assert body["user_id"] == user and body["model_version"] == 1 and body["fallback"] is False
    got, want = items(body), expected(model, user, k)
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-12)


def test_unknown_user_gets_the_popularity_fallback(home, make_client):
    model = hand_model()
    publish(home, model, 1)
    body = make_client().get("/recommendations/someone-new", params={"k": 4}).json()
    assert body["fallback"] is True and body["model_version"] == 1
    assert [i for i, _ in items(body)] == ["i0", "i1", "i2", "i3"]  # popularity descending
    assert [i for i, _ in items(body)] == [i for i, _ in expected(model, "someone-new", 4)]


def test_k_beyond_catalogue_minus_history_gives_valid_unique_finite_items(home, make_client):
    publish(home, hand_model(), 1)
    client = make_client()
    body = client.get("/recommendations/u0", params={"k": MAX_K, "exclude_purchased": "true"}).json()
    ids = [i for i, _ in items(body)]
    assert len(ids) == len(set(ids)) == 6  # 8 items minus the 2 u0 bought
    assert not {"i0", "i3"} & set(ids)
    assert set(ids) <= {f"i{n}" for n in range(8)}
    assert all(np.isfinite(s) for _, s in items(body))
    scores = [s for _, s in items(body)]
    assert scores == sorted(scores, reverse=True)
    # without the exclusion the bought items are there (the model's repeat-purchase signal)
    full = [i for i, _ in items(client.get("/recommendations/u0", params={"k": 100}).json())]
    assert len(full) == 8 and {"i0", "i3"} <= set(full)


def test_business_filters_apply_after_scoring(home, make_client):
    publish(home, hand_model(), 1)
    catalogue = frozenset(f"i{n}" for n in range(8)) - {"i1"}
    client = make_client(item_filter=ItemFilter(catalogue=catalogue, excluded=frozenset({"i2"})))
    for user in ("u0", "u3", "newcomer"):
        ids = [i for i, _ in items(client.get(f"/recommendations/{user}", params={"k": 8}).json())]
        assert len(ids) == 6 and not {"i1", "i2"} & set(ids)
    batch = client.post("/recommendations", json={"user_ids": ["u0", "nobody"], "k": 8}).json()
    assert [r["user_id"] for r in batch["results"]] == ["u0", "nobody"]
    assert [r["fallback"] for r in batch["results"]] == [False, True]
    assert all(not {"i1", "i2"} & {x["item_id"] for x in r["items"]} for r in batch["results"])


def test_item_filter_from_files(tmp_path):
    (tmp_path / "cat.txt").write_text("# catalogue\ni0\n\ni1\n")
    (tmp_path / "ex.txt").write_text("i1\n")
    f = ItemFilter.from_files(tmp_path / "cat.txt", tmp_path / "ex.txt")
    assert f.mask(np.array(["i0", "i1", "i2"])).tolist() == [False, True, True]


def test_batch_answers_match_single_answers(home, make_client):
    publish(home, hand_model(), 1)
    client = make_client()
    users = ["u0", "u1", "u2", "ghost"]
    batch = client.post("/recommendations", json={"user_ids": users, "k": 5}).json()
    assert batch["model_version"] == 1
    for user, result in zip(users, batch["results"]):
        assert result == client.get(f"/recommendations/{user}", params={"k": 5}).json()


@pytest.mark.parametrize(
    "path",
    ["/recommendations/u0?k=0", "/recommendations/u0?k=-3", f"/recommendations/u0?k={MAX_K + 1}",
     "/recommendations/u0?k=10000000000000000000000", "/recommendations/u0?k=abc",
     "/recommendations/" + "x" * 129, "/recommendations/bad%01id", "/recommendations/tab%09id"],
)
def test_bad_single_requests_get_422_json(home, make_client, path):
    publish(home, hand_model(), 1)
    r = make_client().get(path)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json") and r.json()["error"]


def test_longest_valid_id_is_accepted(home, make_client):
    publish(home, hand_model(), 1)
    r = make_client().get("/recommendations/" + "é" * 128)
    assert r.status_code == 200 and r.json()["fallback"] is True


def test_bad_routes_and_bodies(home, make_client):
    publish(home, hand_model(), 1)
    client = make_client()
    cases = [
        (client.get("/no/such/route"), 404, "not_found"),
        (client.delete("/recommendations/u0"), 405, "method_not_allowed"),
        (client.post("/recommendations", content=b"{nope", headers={"content-type": "application/json"}), 400, "invalid_json"),
        (client.post("/recommendations", content=b"user_ids=u0"), 422, "invalid_request"),
        (client.post("/recommendations", json={"user_ids": []}), 422, "invalid_request"),
        (client.post("/recommendations", json={"user_ids": ["u0"], "k": 0}), 422, "invalid_request"),
        (client.post("/recommendations", json={"user_ids": [f"u{i}" for i in range(MAX_BATCH + 1)]}), 422, "invalid_request"),
        (client.post("/recommendations", json={"user_ids": ["ok", "x" * 129]}), 422, "invalid_user_id"),
        (client.post("/recommendations", json={"user_ids": ["u0"] * 60000}), 413, "payload_too_large"),
        (client.post("/recommendations", content=b"[" + b"1," * MAX_BODY_BYTES + b"1]",
                     headers={"content-type": "application/json"}), 413, "payload_too_large"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (status, response.text[:200])
        assert response.json()["error"] == code


def test_chunked_oversized_body_is_refused(home, make_client):
    publish(home, hand_model(), 1)

    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    r = make_client().post("/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_not_ready_without_a_champion_then_ready_after_reload(home, make_client):
    client = make_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    r = client.get("/recommendations/u0")
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
    publish(home, hand_model(), 4)
    assert client.post("/admin/reload", headers=AUTH).json()["reload"]["champion"]["version"] == 4
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["champion"]["version"] == 4


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}])
def test_admin_calls_need_the_token(home, make_client, headers):
    publish(home, hand_model(), 1)
    client = make_client()
    # a missing or invalid body is not looked at before the token: 401, never 422
    for path, body in (("/admin/reload", None), ("/admin/rollback", {"reason": "x"}), ("/admin/rollback", None),
                       ("/admin/rollback", {"to_version": "not a number"})):
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", (path, body, r.text)
        assert "Bearer <FACTORY_ADMIN_TOKEN>" in r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_no_token_configured_refuses_every_admin_call(home, make_client):
    publish(home, hand_model(), 1)
    client = make_client(admin_token=None)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}, AUTH):
        assert client.post("/admin/reload", headers=headers).status_code == 401
        assert client.post("/admin/rollback", json={"reason": "x"}, headers=headers).status_code == 401
    assert "admin API is disabled" in str(client.post("/admin/reload").json())  # says why, not "send a token"
    assert make_client(admin_token=TOKEN).post("/admin/reload", headers=AUTH).status_code == 200


def test_metrics_in_prometheus_text_format(home, make_client):
    publish(home, hand_model(), 3)
    client = make_client()
    client.get("/recommendations/u0")
    client.get("/recommendations/new-user")
    client.get("/recommendations/u0?k=0")
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert 'factory_serve_requests_total{method="GET",route="/recommendations/{user_id}",status="200"} 2' in text
    assert 'factory_serve_requests_total{method="GET",route="/recommendations/{user_id}",status="422"} 1' in text
    assert 'factory_serve_request_duration_seconds_bucket{le="+Inf",route="/recommendations/{user_id}"} 3' in text  # labels sorted
    assert 'factory_serve_model_version{role="champion"} 3' in text
    assert "factory_serve_fallback_rate 0.5" in text
    assert "# TYPE factory_serve_request_duration_seconds histogram" in text


def test_openapi_docs(home, make_client):
    publish(home, hand_model(), 1)
    client = make_client()
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommendations/{user_id}", "/recommendations", "/healthz", "/readyz", "/metrics",
            "/admin/reload", "/admin/rollback"} <= set(paths)


def test_batch_scoring_equals_top_k_of_the_blend_model():
    model = hand_model(seed=5, n_users=40, n_items=25)
    loaded = LoadedModel(model, 1, "x", "m.json")
    users = [f"u{i}" for i in range(40)] + ["nobody", "u1"]
    for k in (1, 7, 25, 100):
        got = loaded.recommend(users, k)
        for user, rec in zip(users, got):
            want = expected(model, user, k)
            assert rec.item_ids == [i for i, _ in want]
            np.testing.assert_allclose(rec.scores, [s for _, s in want], rtol=1e-12)


@pytest.mark.parametrize("query", ["", "k=3", "k=8&exclude_purchased=true", "exclude_purchased=false&k=1", f"k={MAX_K}"])
@pytest.mark.parametrize("user", ["u0", "u5", "someone-new", "é" * 128])
def test_fast_path_answers_byte_for_byte_as_the_fastapi_route(home, make_client, query, user):
    publish(home, hand_model(), 1)
    client = make_client()
    fast = client.get(f"/recommendations/{user}?{query}")
    routed = client.get(f"/recommendations/{user}?{query}{'&' if query else ''}unrelated=1")  # FastAPI: ignores it
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content
    assert {k: fast.headers[k] for k in ("content-type", "content-length")} == {k: routed.headers[k] for k in ("content-type", "content-length")}
    assert 'route="/recommendations/{user_id}",status="200"} 2' in client.get("/metrics").text


def test_fast_path_takes_only_plainly_valid_requests():
    from factory_assets.serving.app import _FastRecommend

    def parse(path: str, query: bytes = b"", method: str = "GET"):
        return _FastRecommend.parse({"method": method, "path": path, "query_string": query, "root_path": ""})

    assert parse("/recommendations/u0") == ("u0", 10, None)
    assert parse("/recommendations/u0", b"k=7&exclude_purchased=true") == ("u0", 7, True)
    assert parse("/recommendations/u0", b"exclude_purchased=false") == ("u0", 10, False)
    assert parse("/recommendations/u0", f"k={MAX_K}".encode()) == ("u0", MAX_K, None)
    for path, query in [("/recommendations/u0", b"k=0"), ("/recommendations/u0", f"k={MAX_K + 1}".encode()),
                        ("/recommendations/u0", b"k=07"), ("/recommendations/u0", b"k=-1"), ("/recommendations/u0", b"k=1&k=2"),
                        ("/recommendations/u0", b"k"), ("/recommendations/u0", b"exclude_purchased=True"),
                        ("/recommendations/u0", b"other=1"), ("/recommendations/u0", b"k=%31"), ("/recommendations/", b""),
                        ("/recommendations/a/b", b""), ("/recommendations/" + "x" * 129, b""), ("/recommendations/tab\tid", b""),
                        ("/recommendationsX/u0", b""), ("/metrics", b"")]:
        assert parse(path, query) is None, (path, query)
    assert parse("/recommendations/u0", method="HEAD") is None


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["no-token", "wrong-token"])
def test_admin_auth_is_checked_before_the_body_is_read(home, make_client, headers):
    publish(home, hand_model(), 1)
    client = make_client()
    json_type = {"content-type": "application/json"}
    bodies = [(b"{nope", json_type), (b"", json_type), (b"reason=x", {"content-type": "application/x-www-form-urlencoded"}),
              (b'{"to_version": "not a number"}', json_type), (b"x" * (MAX_BODY_BYTES + 1), json_type)]
    for path in ("/admin/rollback", "/admin/reload", "/admin/no-such-call"):
        for content, content_type in bodies:
            r = client.post(path, content=content, headers={**headers, **content_type})
            assert r.status_code == 401, (path, content[:20], r.text[:200])
            assert r.json() == {"error": "unauthorized",
                                "detail": "admin calls need 'Authorization: Bearer <FACTORY_ADMIN_TOKEN>'"}
            assert r.headers["WWW-Authenticate"] == "Bearer"
    text = client.get("/metrics").text
    assert 'factory_serve_requests_total{method="POST",route="/admin/rollback",status="401"} 5' in text
    assert 'factory_serve_requests_total{method="POST",route="/admin/reload",status="401"} 5' in text
    assert 'factory_serve_requests_total{method="POST",route="unmatched",status="401"} 5' in text
    # with the token the body is looked at as before
    r = client.post("/admin/rollback", content=b"{nope", headers={**AUTH, **json_type})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
    r = client.post("/admin/rollback", json={"to_version": "not a number"}, headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    r = client.post("/admin/no-such-call", headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (404, "not_found")


def test_no_token_configured_refuses_malformed_admin_bodies_with_401(home, make_client):
    publish(home, hand_model(), 1)
    client = make_client(admin_token=None)
    r = client.post("/admin/rollback", content=b"{nope", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized",
                        "detail": "the admin API is disabled: the server was started without FACTORY_ADMIN_TOKEN"}


def asset_urls(html: str) -> list[str]:
    """Every ``src`` / ``href`` of the page's script and link tags, and the OpenAPI URL the page loads."""
    from html.parser import HTMLParser

    urls: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "script" and a.get("src"):
                urls.append(a["src"])
            elif tag == "link" and a.get("href"):
                urls.append(a["href"])
            elif tag == "redoc" and a.get("spec-url"):
                urls.append(a["spec-url"])

    Collect().feed(html)
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_work_offline(home, make_client, page):
    publish(home, hand_model(), 1)
    client = make_client()
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN or another host
    urls = asset_urls(r.text)
    want = {"/docs": ["/docs-assets/swagger-ui.css", "/docs-assets/favicon.png", "/docs-assets/swagger-ui-bundle.js"],
            "/redoc": ["/docs-assets/favicon.png", "/openapi.json", "/docs-assets/redoc.standalone.js"]}[page]
    assert urls == want
    if page == "/docs":
        assert "url: '/openapi.json'" in r.text and '"validatorUrl": null' in r.text
    types = {".css": ("text/css",), ".js": ("text/javascript", "application/javascript"), ".png": ("image/png",),
             ".json": ("application/json",)}
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(types[url[url.rindex("."):]]), (url, asset.headers["content-type"])
        assert len(asset.content) > 1000
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text
    assert client.get("/docs-assets/../app.py").status_code == 404
    assert "/docs-assets/swagger-ui.css" not in client.get("/openapi.json").json()["paths"]
