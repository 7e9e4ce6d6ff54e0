"""The landing-folder sensor: new or changed files request exactly the partitions they touch.

A file for last Tuesday that lands today requests Tuesday's ``daily_ingest`` run: the partition is
re-materialised from every landed file, its data version changes, and the models trained on it become
stale (their manifests name the old version).  The cursor maps file name -> sha256, so an unchanged file
never requests anything twice and an edited one requests its days again.
"""

import json
from datetime import date

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor, DefaultSensorStatus

from factory_assets.data.resources import EventSourceResource
from factory_assets.platform.files import sha256_file
from factory_assets.platform.partitions import DAILY
from factory_assets.data.sources.folder import landed_files, partitions_touched

LANDED_FILES_SENSOR = "landed_files_sensor"


def plan_requests(files: dict[str, str], touched: dict[str, set[date]], cursor: dict[str, str], valid: set[str]) -> tuple[list[str], dict[str, str]]:
    """Partition keys to request for files whose sha256 differs from the cursor, and the new cursor.

    Args:
        files: file name -> sha256 of every landed file.
        touched: file name -> days with accepted rows (only needed for new/changed files).
        cursor: file name -> sha256 already handled.
        valid: partition keys of the partitions definition (other days are skipped).
    """
    keys: set[str] = set()
    for name, sha in files.items():
        if cursor.get(name) != sha:
            keys |= {d.isoformat() for d in touched.get(name, set())} & valid
    return sorted(keys), {**cursor, **files}


@sensor(
    name=LANDED_FILES_SENSOR,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    job_name="daily_ingest",
    description="Requests daily_ingest for exactly the days that new or changed landed files touch (folder source).",
)
def landed_files_sensor(context: SensorEvaluationContext, event_source: EventSourceResource):
    if event_source.source_name != "folder":
        return SkipReason(f"the configured source is {event_source.source_name!r}, not 'folder'")
    cursor = json.loads(context.cursor) if context.cursor else {}
    files = {path.name: sha256_file(path) for path in landed_files(event_source.path)}
    changed = {name for name, sha in files.items() if cursor.get(name) != sha}
    touched = {path.name: partitions_touched(path) for path in landed_files(event_source.path) if path.name in changed}
    valid = set(DAILY.get_partition_keys())
    keys, new_cursor = plan_requests(files, touched, cursor, valid)
    context.log.info(f"{len(changed)} new or changed file(s) touch {len(keys)} partition(s)")
    return SensorResult(
        run_requests=[
            RunRequest(run_key=f"{key}:{'+'.join(sorted(files[n] for n in changed))[:64]}", partition_key=key)
            for key in keys
        ],
        cursor=json.dumps(new_cursor, sort_keys=True),
    )
