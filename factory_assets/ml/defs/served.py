"""``served_model``: the champion pointer, moved only when the candidate's blocking checks passed."""


from dagster import AssetExecutionContext, DataVersion, Failure, MaterializeResult, MetadataValue, asset

from factory_assets.ml.defs.candidate import CANDIDATE_MODEL
from factory_assets.platform.partitions import DAILY, GROUP_SERVING, ONE_RUN_PER_PARTITION, WAREHOUSE_POOL, partition_day
from factory_assets.ml.recsys.artefact import ArtefactIntegrityError, load_manifest_model, read_manifest
from factory_assets.ml import registry
from factory_assets.resources import FactoryResource

SERVED_MODEL = "served_model"


@asset(
    name=SERVED_MODEL,
    partitions_def=DAILY,
    deps=[CANDIDATE_MODEL],
    group_name=GROUP_SERVING,
    kinds={"json"},
    pool=WAREHOUSE_POOL,
    backfill_policy=ONE_RUN_PER_PARTITION,
    code_version="1",
    description="The champion alias (version, sha256 and path of the manifest, metrics, reason). Runs only when "
    "candidate_model's blocking checks pass; a rejected candidate leaves the previous champion in place.",
)
def served_model(context: AssetExecutionContext, factory: FactoryResource) -> MaterializeResult:
    day = partition_day(context)
    layout = factory.layout.ensure()
    with factory.warehouse() as con:
        row = registry.latest_for_day(con, day)
        if row is None:
            raise Failure(description=f"no candidate_model was trained for {day}", allow_retries=False)
        if row["status"] in ("rejected", "shadow"):
            raise Failure(
                description=f"candidate v{row['version']} for {day} is {row['status']}, not promotable: {row['reason']}",
                allow_retries=False,
            )
        try:  # verify the manifest and the served artefact before pointing anyone at them
            manifest = read_manifest(row["manifest_path"], row["manifest_sha256"])
            load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
        except (ArtefactIntegrityError, FileNotFoundError) as exc:
            raise Failure(description=f"candidate v{row['version']} failed verification: {exc}", allow_retries=False) from exc
        current = registry.read_alias(layout.aliases)
        moved = False  # did this materialization move the champion alias?
        if current is not None and current["version"] == row["version"]:
            pointer = current  # a re-run reproduced the champion itself: nothing moves
            context.log.info(f"v{row['version']} ({day}) is already the champion")
        elif current is not None and (row["status"] == "backtest" or current["partition_day"] > row["partition_day"]):
            pointer = current
            context.log.info(f"v{row['version']} ({day}) is a backtest, older than the champion v{current['version']} "
                             f"({current['partition_day']}): recorded, never promoted over it")
        elif (kept := None if row["status"] == registry.CHAMPION
              else registry.kept_on_reregistration(con, row["version"], row["status"])) is not None:
            # e.g. the day re-run after a rollback: the retired version is not promoted again
            if current is None:
                raise Failure(
                    description=f"candidate v{row['version']} for {day} is {row['status']}, not promotable: {kept}",
                    allow_retries=False,
                )
            pointer = current
            context.log.warning(
                f"v{row['version']} ({day}) is {row['status']} ({kept}): the champion v{current['version']} stays; "
                f"serve it on purpose with `factory models rollback --to {row['version']}`"
            )
        else:
            model = manifest["evaluation"]["model"]
            reason = (
                f"candidate {day}: NDCG@10 {model['ndcg_at_10']:.4f}; "
                + "; ".join(f"{g['name']} passed" for g in row["metrics"]["gates"])
            )
            moved = True
            pointer = registry.promote(
                con, layout.aliases, row["version"], reason,
                {"source": factory.source, "metrics": {k: model[k] for k in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "coverage", "n_users")}},
            )
    return MaterializeResult(
        data_version=DataVersion(pointer["sha256"]),
        metadata={
            "promoted": moved,  # False: the champion stayed (a backtest, a kept status, already the champion)
            "version": pointer["version"],
            "sha256": pointer["sha256"],
            "path": MetadataValue.path(pointer["path"]),
            "previous_version": MetadataValue.int(pointer["previous_version"]) if pointer.get("previous_version") else MetadataValue.null(),
            "reason": pointer["reason"],
            "metrics": MetadataValue.json(pointer.get("metrics", {})),
        },
    )
