"""``factory serve`` (the CLI hook) and the app over real HTTP on 127.0.0.1 (uvicorn in a thread)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from factory_assets import cli
from factory_assets_tests.service.conftest import SOURCE, TOKEN, hand_model, publish


def test_factory_serve_delegates_to_the_service(monkeypatch, home, tmp_path):
    from factory_assets.serving import app

    calls = []
    monkeypatch.setattr(app, "serve", lambda host, port, config, log_level: calls.append((host, port, config)) or 0)
    monkeypatch.setenv("FACTORY_ADMIN_TOKEN", "tok")
    assert cli.main(["serve", "--port", "8123", "--home", str(home), "--landing", str(tmp_path / "l")]) == 0
    host, port, config = calls[0]
    assert (host, port) == ("127.0.0.1", 8123)
    assert config.home == home.resolve() and config.admin_token == "tok" and config.landing_dir == (tmp_path / "l").resolve()
    assert config.source == "simulator"


def test_factory_serve_refuses_a_bad_source_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("FACTORY_SOURCE", "online-retail")  # a typo: it would serve nothing, forever, with 503
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == (
        "factory serve: FACTORY_SOURCE='online-retail' is not one of simulator, online_retail, movielens, folder")
    with pytest.raises(SystemExit):  # the flag is checked by argparse
        cli.main(["serve", "--source", "bogus"])


def test_config_from_env_uses_the_folder_source_path_as_landing(monkeypatch, tmp_path):
    from factory_assets.serving.app import ServiceConfig

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path))
    monkeypatch.setenv("FACTORY_SOURCE", "folder")
    monkeypatch.setenv("FACTORY_SOURCE_PATH", str(tmp_path / "landing"))
    monkeypatch.delenv("FACTORY_ADMIN_TOKEN", raising=False)
    config = ServiceConfig.from_env()
    assert config.landing_dir == tmp_path / "landing" and config.admin_token is None and config.source == "folder"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(30)
def test_real_http_on_loopback(home):
    import uvicorn

    from factory_assets.serving.app import ServiceConfig, create_app

    publish(home, hand_model(), 1)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceConfig(home=home, source=SOURCE, admin_token=TOKEN)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/readyz").status_code == 200
            body = http.get("/recommendations/u0", params={"k": 2}).json()
            assert body["model_version"] == 1 and len(body["items"]) == 2
            assert http.get("/nope").json()["error"] == "not_found"
            big = http.post("/recommendations", content=b"x" * 300_000, headers={"content-type": "application/json"})
            assert big.status_code == 413
            assert http.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()
