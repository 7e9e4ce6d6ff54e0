"""Alerts: failed runs, failed gates and a freshness failure of the served model POST JSON to a webhook.

The webhook is a local HTTP receiver on 127.0.0.1 (an ephemeral port) that records what it is sent; it is
shut down by each test and, should a test hang, by its own watchdog timer.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
    materialize,
)
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange

from factory_assets.platform.alerts import (
    GATE_FRESHNESS_ALERT,
    RUN_FAILURE_ALERT,
    AlertDeliveryError,
    AlertWebhook,
    alert_payload,
    gate_freshness_alert,
    run_failure_alert,
    run_failure_payloads,
)
from factory_assets.definitions import defs
from factory_assets.resources import Factory
from factory_assets_tests.helpers import ALL_ASSETS, small_factory

UI = "http://ui.example.test:3000"
REPOSITORY = defs.get_repository_def()


class Receiver:
    """A bounded local webhook: 127.0.0.1 only, answers ``status``, stops itself after ``lifetime_s``."""

    def __init__(self, status: int = 200, lifetime_s: float = 60.0) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                received.append({"content_type": self.headers.get("Content-Type"), **json.loads(self.rfile.read(length))})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.watchdog = threading.Timer(lifetime_s, self.server.shutdown)
        self.watchdog.daemon = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def __enter__(self) -> "Receiver":
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def _webhook(receiver: Receiver) -> AlertWebhook:
    return AlertWebhook(url=receiver.url, ui_url=UI, timeout_s=5.0)


def test_payload_carries_asset_partition_reason_and_links():
    body = alert_payload("gate_failed", "candidate_model", "2024-11-30", "gate beats_baseline failed: x", UI + "/", "abc", "beats_baseline")
    assert body["kind"] == "gate_failed" and body["asset"] == "candidate_model" and body["partition"] == "2024-11-30"
    assert body["run_url"] == f"{UI}/runs/abc" and body["asset_url"] == f"{UI}/assets/candidate_model"
    assert body["check"] == "beats_baseline" and body["reason"].startswith("gate beats_baseline failed")
    assert alert_payload("run_failed", None, None, "r")["run_url"] is None
    json.dumps(body)  # JSON-able as is


def test_webhook_posts_json_and_raises_when_delivery_fails(receiver):
    assert _webhook(receiver).post({"hello": "world"}) == 200
    assert receiver.bodies == [{"content_type": "application/json", "hello": "world"}]
    with Receiver(status=500) as failing:
        with pytest.raises(AlertDeliveryError, match="HTTP 500"):
            _webhook(failing).post({"x": 1})
    with pytest.raises(AlertDeliveryError, match="unreachable"):
        AlertWebhook(url=failing.url, timeout_s=1.0).post({"x": 1})  # closed: nobody listens there now
    assert not AlertWebhook(url="").enabled


def _run_failure_context(instance: DagsterInstance, run_id: str, webhook: AlertWebhook):
    run = instance.get_run_by_id(run_id)
    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    return build_run_status_sensor_context(
        sensor_name=RUN_FAILURE_ALERT, dagster_event=record.event_log_entry.dagster_event, dagster_instance=instance,
        dagster_run=run, resources={"alert_webhook": webhook}, repository_def=REPOSITORY,
    )


def test_a_failed_run_notifies_with_asset_partition_reason_and_run_link(tmp_path, receiver):
    instance = DagsterInstance.ephemeral()
    broken = Factory(home=str(tmp_path), source="online_retail", source_path=str(tmp_path / "missing.parquet"))
    result = materialize(
        ALL_ASSETS, selection=["raw_events"], partition_key="2024-11-05", resources=broken.resources(),
        instance=instance, raise_on_error=False,
    )
    assert not result.success
    assert run_failure_alert(_run_failure_context(instance, result.run_id, _webhook(receiver))) is None
    (body,) = receiver.bodies
    assert body["kind"] == "run_failed" and body["asset"] == "raw_events" and body["partition"] == "2024-11-05"
    assert "does not exist" in body["reason"] and body["run_url"] == f"{UI}/runs/{result.run_id}"


def test_a_failed_gate_notifies_once_and_its_failed_run_does_not_notify_twice(tmp_path, receiver):
    instance = DagsterInstance.ephemeral()
    webhook = _webhook(receiver)

    def evaluate(cursor):
        context = build_sensor_context(
            instance=instance, cursor=cursor, repository_def=REPOSITORY, resources={"alert_webhook": webhook},
            sensor_name=GATE_FRESHNESS_ALERT,
        )
        out = gate_freshness_alert(context)
        assert isinstance(out, SensorResult)
        return out.cursor

    cursor = evaluate(None)  # the first evaluation only records where the event log stands
    # a training window on an empty home: its blocking check window_complete fails, the run fails
    result = materialize(
        ALL_ASSETS, selection=["training_window"], partition_key="2024-11-05",
        resources=small_factory(tmp_path).resources(), instance=instance, raise_on_error=False,
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run_failure_payloads(instance, run, "failed", UI) == []
    assert run_failure_alert(_run_failure_context(instance, result.run_id, webhook)) is None
    cursor = evaluate(cursor)
    (body,) = receiver.bodies
    assert body["kind"] == "gate_failed" and body["asset"] == "training_window" and body["check"] == "window_complete"
    assert body["partition"] == "2024-11-05" and body["run_url"] == f"{UI}/runs/{result.run_id}"
    assert "missing feature partitions" in body["reason"]
    cursor = evaluate(cursor)
    assert len(receiver.bodies) == 1  # not twice


def test_a_freshness_failure_of_the_served_model_notifies_on_each_change_to_fail(receiver):
    instance = DagsterInstance.ephemeral()
    webhook = _webhook(receiver)
    served = AssetKey("served_model")

    def change(new: FreshnessState, previous: FreshnessState) -> None:
        instance.report_runless_asset_event(
            FreshnessStateChange(key=served, new_state=new, previous_state=previous, state_change_timestamp=time.time())
        )

    def evaluate(cursor):
        context = build_sensor_context(instance=instance, cursor=cursor, repository_def=REPOSITORY, resources={"alert_webhook": webhook})
        return gate_freshness_alert(context).cursor

    cursor = evaluate(None)
    change(FreshnessState.FAIL, FreshnessState.PASS)
    cursor = evaluate(cursor)
    cursor = evaluate(cursor)  # still failing: no second alert
    change(FreshnessState.PASS, FreshnessState.FAIL)
    cursor = evaluate(cursor)
    change(FreshnessState.FAIL, FreshnessState.PASS)
    evaluate(cursor)
    assert [b["kind"] for b in receiver.bodies] == ["freshness_failed", "freshness_failed"]
    assert receiver.bodies[0]["asset"] == "served_model" and "freshness policy failed" in receiver.bodies[0]["reason"]


def test_without_a_webhook_the_sensors_skip():
    webhook = AlertWebhook(url="")
    context = build_sensor_context(instance=DagsterInstance.ephemeral(), repository_def=REPOSITORY, resources={"alert_webhook": webhook})
    assert isinstance(gate_freshness_alert(context), SkipReason)


def test_alert_sensors_run_by_default_in_the_code_location():
    sensors = {s.name: s for s in defs.sensors}
    for name in (RUN_FAILURE_ALERT, GATE_FRESHNESS_ALERT):
        assert sensors[name].default_status.value == "RUNNING"
    assert "alert_webhook" in defs.resources
