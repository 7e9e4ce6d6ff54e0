"""``live_state``: today's intraday features folded into the champion, for the service (the live path).

Not partitioned: the file ``<home>/<source>/live/state.npz`` always describes *today so far* for *the champion of
now*.  Each materialization is :func:`factory_assets.ml.live_state.refresh_live_state`; the service reloads the
file when it changes and uses it only while it names the champion it serves.

Dependencies: ``intraday_features`` (the DataOps location's intraday path, every ~15 minutes; an external spec in
this location, :data:`factory_assets.ml.defs.definitions.EXTERNAL_INTRADAY`) and ``served_model`` (a new champion
makes the previous state useless: the service ignores a state built for another version).

Automation (:data:`LIVE_CONDITION`, its own, so :func:`factory_assets.platform.automation.automate` keeps it):
run after each update of either dependency (latched until handled, so an update while a run is in progress is not
lost), once ``intraday_features`` exists, while neither a dependency nor this asset is in progress.  Only
*materialised* updates count, not requests of the same tick: ``served_model`` is daily-partitioned and never runs
in the same run as this asset, so reacting to its request would build a state for the outgoing champion.
Freshness (:data:`LIVE_FRESHNESS`, its own as well): fail after one hour without a materialization (three intraday
refreshes missed).

A materialization that writes nothing (no champion yet, the intraday path never ran, or its day is already in the
champion's window) still records why: metadata ``written`` false and ``reason``.
"""

from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    DataVersion,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from factory_assets.feature_store.resource import FeatureStoreResource
from factory_assets.ml.defs.served import SERVED_MODEL
from factory_assets.ml.live_state import refresh_live_state
from factory_assets.ml.resources import ArtefactStore
from factory_assets.platform.keys import INTRADAY_FEATURES, LIVE_STATE
from factory_assets.platform.partitions import GROUP_SERVING, WAREHOUSE_POOL

LIVE_STATE_CODE_VERSION = "1"

INPUT_UPDATED = AutomationCondition.any_deps_match(AutomationCondition.newly_updated()).with_label(
    "intraday features or the champion updated"
)
INTRADAY_PRESENT = (~AutomationCondition.asset_matches(INTRADAY_FEATURES, AutomationCondition.missing())).with_label(
    "intraday features exist"
)
LIVE_CONDITION = (
    INPUT_UPDATED.since_last_handled()
    & INTRADAY_PRESENT
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("live: after each intraday refresh or champion change")
LIVE_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(hours=1))


class _Recorder:
    """A ``Log`` for the library call: forwards to Dagster's log and keeps the messages (the skip reason)."""

    def __init__(self, context: AssetExecutionContext) -> None:
        self.context, self.messages = context, []

    def info(self, msg: str, *args, **kwargs) -> None:
        self.messages.append(msg)
        self.context.log.info(msg)


@asset(
    name=LIVE_STATE,
    deps=[INTRADAY_FEATURES, SERVED_MODEL],
    group_name=GROUP_SERVING,
    kinds={"numpy", "duckdb"},
    pool=WAREHOUSE_POOL,  # reads the feature store (DuckDB lets no reader in while a writer holds the file)
    code_version=LIVE_STATE_CODE_VERSION,
    automation_condition=LIVE_CONDITION,
    freshness_policy=LIVE_FRESHNESS,
    description="Today's additions to the champion for the service (live/state.npz): each user active today gets "
    "an ALS vector folded in from the window and today, today's weights and conversions, and the category trend "
    "when today's category mix drifted. Rebuilt after each intraday refresh and each champion change; the "
    "service uses it only while it names the champion it serves.",
)
def live_state(context: AssetExecutionContext, feature_store: FeatureStoreResource,
               artefacts: ArtefactStore) -> MaterializeResult:
    recorder = _Recorder(context)
    layout = artefacts.layout.ensure()
    try:
        with feature_store.connect() as con:
            summary = refresh_live_state(con, layout, log=recorder)
    except FileNotFoundError:
        raise  # a champion file gone: refresh_live_state's own message
    except OSError as exc:  # an unwritable live/ folder, a full disk: one line, not Dagster's wrapper
        raise Failure(description=f"live_state: cannot write {layout.live_state}: {exc.strerror or exc}",
                      allow_retries=False) from None
    if summary is not None:
        context.log.info(f"live state for v{summary['model_version']}: {summary['users']} users active by "
                         f"{summary['as_of']}, trend on {summary['trend_items']} items")
    if summary is None:
        return MaterializeResult(metadata={
            "written": False,
            "reason": recorder.messages[-1] if recorder.messages else "nothing to do",
            "path": MetadataValue.path(str(layout.live_state)),
        })
    return MaterializeResult(
        data_version=DataVersion(summary["sha256"]),
        metadata={
            "written": True,
            "model_version": summary["model_version"],
            "day": summary["day"],
            "as_of": summary["as_of"],
            "users": MetadataValue.int(summary["users"]),
            "drifted": summary["drifted"],
            "trend_items": MetadataValue.int(summary["trend_items"]),
            "intraday_data_version": summary["data_version"],
            "sha256": summary["sha256"],
            "path": MetadataValue.path(summary["path"]),
            "summary": MetadataValue.json(summary),
        },
    )
