"""Alerting: a failed gate, a failed run, or a freshness failure on the served model POSTs JSON to a webhook.

Two sensors, both RUNNING by default and both silent (a skip, nothing sent) until a webhook is configured:

``factory_run_failure_alert`` (a ``run_failure_sensor``)
    any failed run of this code location.  A run that failed *only* because blocking checks failed is left
    to the gate alert below (it says which gate and why), so one failed gate sends one alert.
``factory_gate_freshness_alert`` (a plain sensor with a cursor)
    every new failed evaluation of a blocking asset check (a gate: the promotion gates, ``window_complete``,
    the raw data checks), and every change of ``served_model``'s freshness state to ``FAIL``.  On its first
    evaluation it only records where the event log stands (no alert storm for old history).

Body (``Content-Type: application/json``), see :func:`alert_payload`::

    {"source": "factory_assets", "kind": "gate_failed" | "run_failed" | "freshness_failed",
     "asset": "candidate_model", "partition": "2024-11-30" | null, "reason": "...",
     "check": "beats_baseline" | null, "run_id": "..." | null, "run_url": "http://127.0.0.1:3000/runs/..." | null,
     "asset_url": "http://127.0.0.1:3000/assets/candidate_model", "sent_at": "2024-12-01T00:31:02+00:00"}

Configuration (resource ``alert_webhook``, defaults from the environment when definitions load):
``FACTORY_ALERT_WEBHOOK_URL`` (empty: alerting off), ``FACTORY_UI_URL`` (base of the links, default
``http://127.0.0.1:3000``).  A delivery failure raises, so the sensor tick fails visibly and the events are
tried again on the next tick.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from dagster import (
    AssetKey,
    DagsterEventType,
    ConfigurableResource,
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)
# Not exported at the top level in 1.13 (the freshness state and check execution status records):
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from pydantic import Field

from factory_assets.platform import settings
from factory_assets.platform.keys import INTRADAY_FEATURES, LIVE_STATE, SERVED_MODEL

ALERT_WEBHOOK_ENV = settings.ALERT_WEBHOOK_ENV
UI_URL_ENV = settings.UI_URL_ENV
DEFAULT_UI_URL = settings.DEFAULT_UI_URL
RUN_FAILURE_ALERT = "factory_run_failure_alert"
GATE_FRESHNESS_ALERT = "factory_gate_freshness_alert"
FRESHNESS_ALERT_ASSETS: tuple[str, ...] = (SERVED_MODEL, INTRADAY_FEATURES, LIVE_STATE)
ALERT_INTERVAL_S = settings.alert_interval_s()
PARTITION_TAG = "dagster/partition"
_HISTORY_LIMIT = 100
_GATE_ERROR = "DagsterAssetCheckFailedError"


class AlertDeliveryError(RuntimeError):
    """The webhook could not be reached or did not answer 2xx."""


class AlertWebhook(ConfigurableResource):
    """Where alerts go: a webhook URL (empty = off) and the UI base URL used for links."""

    url: str | None = Field(default=None, description=f"webhook URL; default: {ALERT_WEBHOOK_ENV} (at run time); empty = off")
    ui_url: str | None = Field(default=None, description=f"UI base URL for links; default: {UI_URL_ENV} (at run time)")
    timeout_s: float = Field(default=5.0, description="HTTP timeout of one POST, seconds")

    @property
    def webhook(self) -> str:
        """The webhook URL: the configured one, else ``FACTORY_ALERT_WEBHOOK_URL`` (empty: alerts off)."""
        return self.url if self.url is not None else settings.alert_webhook_url()

    @property
    def ui_base(self) -> str:
        """The UI's base URL for links: the configured one, else ``FACTORY_UI_URL``."""
        return self.ui_url if self.ui_url is not None else settings.ui_url()

    @property
    def enabled(self) -> bool:
        return bool(self.webhook.strip())

    def post(self, payload: Mapping[str, Any]) -> int:
        """POST one JSON payload; returns the HTTP status.

        Raises:
            AlertDeliveryError: connection errors, timeouts and non-2xx answers.
        """
        body = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
        request = urllib.request.Request(
            self.webhook, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "factory-assets-alerts"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - configured URL
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raise AlertDeliveryError(f"webhook answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AlertDeliveryError(f"webhook unreachable: {exc}") from exc
        if not 200 <= status < 300:
            raise AlertDeliveryError(f"webhook answered HTTP {status}")
        return status


def alert_payload(
    kind: str,
    asset: str | None,
    partition: str | None,
    reason: str,
    ui_url: str = DEFAULT_UI_URL,
    run_id: str | None = None,
    check: str | None = None,
    sent_at: datetime | None = None,
) -> dict[str, Any]:
    """The JSON body of one alert (pure; see the module docstring for the fields)."""
    base = ui_url.rstrip("/")
    return {
        "source": "factory_assets",
        "kind": kind,
        "asset": asset,
        "partition": partition,
        "reason": reason,
        "check": check,
        "run_id": run_id or None,
        "run_url": f"{base}/runs/{run_id}" if run_id else None,
        "asset_url": f"{base}/assets/{asset}" if asset else None,
        "sent_at": (sent_at or datetime.now(timezone.utc)).isoformat(),
    }


def _partition_of_run(instance, run_id: str | None) -> str | None:
    if not run_id:
        return None
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    tags = run.tags
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return f"{start}...{end}" if start and end else None


def _is_gate_failure(event) -> bool:
    error = getattr(event.event_specific_data, "error", None)
    return error is not None and error.cls_name == _GATE_ERROR


def run_failure_payloads(instance, run, failure_message: str | None, ui_url: str) -> list[dict[str, Any]]:
    """The alerts for one failed run: one per failed step (or one for the run), none if only gates failed."""
    steps = [
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(run_id=run.run_id, of_type=DagsterEventType.STEP_FAILURE).records
    ]
    if steps and all(_is_gate_failure(e) for e in steps):
        return []
    partition = _partition_of_run(instance, run.run_id)
    selection = sorted(k.to_user_string() for k in (run.asset_selection or ()))
    if not steps:
        reason = failure_message or "run failed"
        return [alert_payload("run_failed", ",".join(selection) or run.job_name, partition, reason, ui_url, run.run_id)]
    payloads = []
    for event in steps:
        if _is_gate_failure(event):
            continue
        error = event.event_specific_data.error
        reason = error.message.strip() if error is not None else (event.message or "step failed")
        asset = event.step_key if event.step_key in selection else (",".join(selection) or event.step_key)
        payloads.append(alert_payload("run_failed", asset, partition, f"step {event.step_key} failed: {reason}", ui_url, run.run_id))
    return payloads


@run_failure_sensor(
    name=RUN_FAILURE_ALERT,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=ALERT_INTERVAL_S,
    description=f"POSTs a JSON alert for every failed run to the alert webhook ({ALERT_WEBHOOK_ENV}).",
)
def run_failure_alert(context: RunFailureSensorContext, alert_webhook: AlertWebhook):
    if not alert_webhook.enabled:
        return SkipReason(f"no alert webhook configured ({ALERT_WEBHOOK_ENV})")
    payloads = run_failure_payloads(
        context.instance, context.dagster_run, context.failure_event.message, alert_webhook.ui_base
    )
    for payload in payloads:
        alert_webhook.post(payload)
    context.log.info(f"run {context.dagster_run.run_id}: {len(payloads)} alert(s) sent")
    return None


def gate_check_keys(asset_graph) -> list:
    """Every blocking asset check of the code location (the gates)."""
    return sorted((k for k in asset_graph.asset_check_keys if asset_graph.get(k).blocking), key=lambda k: k.to_user_string())


def collect_gate_alerts(instance, check_keys: Iterable, seen: Mapping[str, int], ui_url: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Failed evaluations newer than ``seen`` (check -> last record id) as payloads; the new ``seen``."""
    payloads, new_seen = [], dict(seen)
    for key in check_keys:
        name = key.to_user_string()
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=_HISTORY_LIMIT)
        last = seen.get(name, 0)
        new_seen[name] = max([last, *(r.id for r in records)])
        for record in sorted(records, key=lambda r: r.id):
            if record.id <= last or record.status != AssetCheckExecutionRecordStatus.FAILED:
                continue
            evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
            description = getattr(evaluation, "description", None) or "failed"
            run_id = record.run_id or None
            partition = record.partition or _partition_of_run(instance, run_id)
            payloads.append(
                alert_payload(
                    "gate_failed", key.asset_key.to_user_string(), partition, f"gate {key.name} failed: {description}",
                    ui_url, run_id, check=key.name,
                )
            )
    return payloads, new_seen


def collect_freshness_alerts(instance, asset_names: Sequence[str], states: Mapping[str, str], ui_url: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A payload for every asset whose freshness state became FAIL since ``states``; the new states."""
    keys = [AssetKey.from_user_string(n) for n in asset_names]
    records = instance.get_freshness_state_records(keys)
    payloads, new_states = [], dict(states)
    for key in keys:
        name = key.to_user_string()
        record = records.get(key)
        if record is None:
            continue
        state = record.freshness_state.value
        if state == FreshnessState.FAIL.value and states.get(name) != state:
            latest = instance.fetch_materializations(key, limit=1).records
            run_id = latest[0].run_id if latest else None
            partition = latest[0].partition_key if latest else None
            when = datetime.fromtimestamp(latest[0].timestamp, timezone.utc).isoformat() if latest else "never"
            payloads.append(
                alert_payload(
                    "freshness_failed", name, partition,
                    f"freshness policy failed since {record.updated_at.isoformat()}; last materialised {when}",
                    ui_url, run_id,
                )
            )
        new_states[name] = state
    return payloads, new_states


@sensor(
    name=GATE_FRESHNESS_ALERT,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=ALERT_INTERVAL_S,
    description=f"POSTs a JSON alert for every failed gate (blocking check) and for a freshness failure of "
    f"{', '.join(FRESHNESS_ALERT_ASSETS)} to the alert webhook ({ALERT_WEBHOOK_ENV}).",
)
def gate_freshness_alert(context: SensorEvaluationContext, alert_webhook: AlertWebhook):
    if not alert_webhook.enabled:
        return SkipReason(f"no alert webhook configured ({ALERT_WEBHOOK_ENV})")
    cursor = json.loads(context.cursor) if context.cursor else {"checks": {}, "freshness": {}}
    first = not context.cursor
    graph = context.repository_def.asset_graph
    gates, seen = collect_gate_alerts(context.instance, gate_check_keys(graph), cursor.get("checks", {}), alert_webhook.ui_base)
    fresh, states = collect_freshness_alerts(context.instance, FRESHNESS_ALERT_ASSETS, cursor.get("freshness", {}), alert_webhook.ui_base)
    payloads = [] if first else [*gates, *fresh]
    for payload in payloads:
        alert_webhook.post(payload)
    new_cursor = json.dumps({"checks": seen, "freshness": states}, sort_keys=True)
    if not payloads:
        return SensorResult(skip_reason=SkipReason("first evaluation: cursor set" if first else "nothing to report"), cursor=new_cursor)
    context.log.info(f"{len(payloads)} alert(s) sent")
    return SensorResult(cursor=new_cursor)


ALERT_SENSORS = [run_failure_alert, gate_freshness_alert]
