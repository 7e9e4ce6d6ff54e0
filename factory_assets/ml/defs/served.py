"""``served_model``: the champion pointer -- the ONLY writer of ``aliases/champion.json``.

Every change of the served model is a run that materialises ``served_model``, so the latest materialization
of ``served_model`` in the Dagster catalog always names the model being served (metadata ``version``,
``sha256``, ``reason``, ``action``, ``actor``).  Its run config (:class:`ServedModelConfig`) says why:

``promote`` (default)      the day's candidate (or ``version``, trained for the run's partition day), after
                           ``candidate_model``'s blocking checks passed in the same run: today's behaviour
                           (a backtest, a version whose status a re-run keeps, or the champion itself leave
                           the champion in place and record it again).
``rollback``               restore ``version`` (default: the previous eligible champion of the registry's
                           champion stack) after verifying its files; an unparsable alias is set aside as
                           ``champion.json.corrupt-<UTC stamp>``.  ``factory models rollback``, the service's
                           ``/admin/rollback``, the ``rollback_champion`` job and the ``champion_guard`` sensor
                           (actor ``auto-rollback``) all launch this.
``shadow_promotion``       make the shadow ``version`` the champion once ``shadow_evaluation`` proved it better
                           on live traffic (launched by the ``shadow_promoter`` sensor).

The run's partition must be the chosen version's ``partition_day`` (the run fails, naming the right partition,
otherwise).  The asset touches only the registry and the artefact/alias files, never the warehouse: it does
not take the ``warehouse`` pool.
"""


import json
from datetime import datetime, timezone

from dagster import AssetExecutionContext, Config, DataVersion, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field, field_validator

from factory_assets.ml import registry as model_registry
from factory_assets.ml.defs.candidate import CANDIDATE_MODEL
from factory_assets.ml.recsys.artefact import ArtefactIntegrityError, load_manifest_model, read_manifest
from factory_assets.ml.resources import ArtefactStore, RegistryResource
from factory_assets.platform.partitions import DAILY, GROUP_SERVING, ONE_RUN_PER_PARTITION, partition_day

SERVED_MODEL = "served_model"
PROMOTE, ROLLBACK, SHADOW_PROMOTION = "promote", "rollback", "shadow_promotion"
ACTIONS: tuple[str, ...] = (PROMOTE, ROLLBACK, SHADOW_PROMOTION)
ROLLBACK_JOB_NAME = "rollback_champion"  # runs of this job always roll back (factory_assets.ml.defs.jobs)
SERVED_MODEL_CODE_VERSION = "2"  # 2: one writer of the alias, run config with an action


class ServedModelConfig(Config):
    """Why this run moves (or re-records) the champion alias (run config of ``served_model``)."""

    action: str = Field(default=PROMOTE, description="promote (the day's candidate) | rollback | shadow_promotion")
    version: int | None = Field(
        default=None,
        description="the version to serve; promote: default the day's latest candidate; rollback: default the "
        "previous eligible champion; shadow_promotion: required (the shadow)",
    )
    reason: str = Field(default="", description="why (recorded in model_events and the alias; required for rollback)")
    actor: str = Field(default="dagster", description="who asked for it (recorded)")
    evidence_json: str = Field(
        default="{}", description="a JSON object copied into the alias pointer (e.g. the shadow's scores)"
    )

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {value!r}")
        return value


def served_model_run_config(action: str, version: int | None = None, reason: str = "", actor: str = "dagster",
                            evidence: dict | None = None) -> dict:
    """The run config of a ``served_model`` run (see :class:`ServedModelConfig`)."""
    config = {"action": action, "version": version, "reason": reason, "actor": actor,
              "evidence_json": json.dumps(evidence or {}, sort_keys=True, default=str)}
    return {"ops": {SERVED_MODEL: {"config": config}}}


def _fail(message: str) -> Failure:
    return Failure(description=message, allow_retries=False)


def _verify(row: dict, what: str) -> dict:
    """The manifest of ``row`` after checking its digest and its served artefact's (raises Failure)."""
    try:
        manifest = read_manifest(row["manifest_path"], row["manifest_sha256"])
        load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
    except (ArtefactIntegrityError, FileNotFoundError, KeyError, ValueError) as exc:
        raise _fail(f"{what} v{row['version']} failed verification: {exc}") from exc
    return manifest


def _check_partition(day, row: dict) -> None:
    if row["partition_day"] != day.isoformat():
        raise _fail(f"v{row['version']} was trained for {row['partition_day']}: launch served_model with partition "
                    f"{row['partition_day']}, not {day.isoformat()} (`factory models rollback` picks it for you)")


def _promote_candidate(context, config: ServedModelConfig, con, aliases, source: str) -> tuple[dict, bool]:
    """Today's behaviour: the day's candidate becomes champion if it may (returns the pointer, moved?)."""
    day = partition_day(context)
    if config.version is not None:
        row = model_registry.version_row(con, config.version)
        _check_partition(day, row)
    else:
        row = model_registry.latest_for_day(con, day)
    if row is None:
        raise _fail(f"no candidate_model was trained for {day}")
    if row["status"] in ("rejected", "shadow"):
        raise _fail(f"candidate v{row['version']} for {day} is {row['status']}, not promotable: {row['reason']}")
    manifest = _verify(row, "candidate")  # verify the files before pointing anyone at them
    current = model_registry.read_alias(aliases)
    if current is not None and current["version"] == row["version"]:
        context.log.info(f"v{row['version']} ({day}) is already the champion")
        return current, False  # a re-run reproduced the champion itself: nothing moves
    if current is not None and (row["status"] == "backtest" or current["partition_day"] > row["partition_day"]):
        context.log.info(f"v{row['version']} ({day}) is a backtest, older than the champion v{current['version']} "
                         f"({current['partition_day']}): recorded, never promoted over it")
        return current, False
    kept = None if row["status"] == model_registry.CHAMPION else model_registry.kept_on_reregistration(con, row["version"], row["status"])
    if kept is not None:  # e.g. the day re-run after a rollback: the retired version is not promoted again
        if current is None:
            raise _fail(f"candidate v{row['version']} for {day} is {row['status']}, not promotable: {kept}")
        context.log.warning(
            f"v{row['version']} ({day}) is {row['status']} ({kept}): the champion v{current['version']} stays; "
            f"serve it on purpose with `factory models rollback --to {row['version']}`")
        return current, False
    model = manifest["evaluation"]["model"]
    reason = config.reason or (
        f"candidate {day}: NDCG@10 {model['ndcg_at_10']:.4f}; "
        + "; ".join(f"{g['name']} passed" for g in row["metrics"]["gates"])
    )
    pointer = model_registry.promote(
        con, aliases, row["version"], reason,
        {"source": source,
         "metrics": {k: model[k] for k in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "coverage", "n_users")}},
        actor=config.actor,
    )
    return pointer, True


def rollback_target(con, aliases, to_version: int | None = None) -> tuple[int, int]:
    """``(current champion, version a rollback restores)``: ``to_version`` or the first of
    :func:`registry.rollback_candidates`.  An unparsable alias counts as the registry's ``champion`` version.

    Raises:
        LookupError: no champion, or no eligible earlier champion.
        ValueError: ``to_version`` is the champion, rejected or trained on erased data.
    """
    try:
        current_pointer = model_registry.read_alias(aliases)
        current = int(current_pointer["version"]) if current_pointer else None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        current = _registry_champion(con)
    if current is None:
        raise LookupError("there is no champion to roll back from")
    if to_version is None:
        eligible = model_registry.rollback_candidates(con, current)
        if not eligible:
            raise LookupError(f"no earlier eligible champion to roll back to from version {current}")
        to_version = eligible[0]
    row = model_registry.version_row(con, to_version)
    if to_version == current:
        raise ValueError(f"version {to_version} is already the champion")
    if row["status"] == "rejected" or model_registry.has_event(con, to_version, model_registry.ERASED_DATA):
        raise ValueError(f"version {to_version} cannot serve: {row['status']} ({row['reason']})")
    return current, to_version


def _registry_champion(con) -> int | None:
    frame = model_registry.versions(con)
    champions = frame[frame["status"] == model_registry.CHAMPION]["version"].tolist()
    return int(max(champions)) if champions else None


def apply_rollback(con, aliases, reason: str, actor: str, to_version: int | None = None) -> dict:
    """Roll the champion back to ``to_version`` (default: the previous eligible champion); see
    :func:`registry.rollback`.  An alias file that does not parse is moved aside to
    ``champion.json.corrupt-<UTC stamp>`` and the target promoted with the same history record.

    Returns:
        the new pointer.
    Raises:
        LookupError, ValueError: see :func:`rollback_target`; ArtefactIntegrityError / FileNotFoundError: the
        target's files fail verification (nothing changes).
    """
    try:
        model_registry.read_alias(aliases)
        corrupt = False
    except (json.JSONDecodeError, UnicodeDecodeError):
        corrupt = True
    if not corrupt:
        return model_registry.rollback(con, aliases, reason, actor, to_version)
    current, target = rollback_target(con, aliases, to_version)
    row = model_registry.version_row(con, target)
    load_manifest_model(row["manifest_path"], "served", row["manifest_sha256"])
    bad = model_registry.alias_path(aliases)
    bad.rename(bad.with_name(f"{bad.name}.corrupt-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}"))
    return model_registry.promote(
        con, aliases, target, f"rollback from v{current} by {actor}: {reason}",
        {"metrics": row["metrics"].get("evaluation", {}).get("model", {}), "previous_version": current},
        action="rolled_back", actor=actor,
    )


def _rollback(context, config: ServedModelConfig, con, aliases) -> tuple[dict, bool]:
    day = partition_day(context)
    if not config.reason.strip():
        raise _fail("a rollback needs a reason (run config `reason`): it is recorded in the history")
    try:
        _, target = rollback_target(con, aliases, config.version)
        _check_partition(day, model_registry.version_row(con, target))
        pointer = apply_rollback(con, aliases, config.reason, config.actor, target)
    except (LookupError, ValueError) as exc:
        raise _fail(f"rollback refused: {exc}") from exc
    except (ArtefactIntegrityError, FileNotFoundError) as exc:
        raise _fail(f"rollback refused: version {config.version} failed verification: {exc}") from exc
    context.log.warning(f"rolled back from v{pointer['previous_version']} to v{pointer['version']} by {config.actor}")
    return pointer, True


def _promote_shadow(context, config: ServedModelConfig, con, aliases, source: str, evidence: dict) -> tuple[dict, bool]:
    day = partition_day(context)
    if config.version is None:
        raise _fail("shadow_promotion needs the shadow's `version`")
    try:
        row = model_registry.version_row(con, config.version)
    except LookupError as exc:
        raise _fail(str(exc)) from exc
    _check_partition(day, row)
    current = model_registry.read_alias(aliases)
    if current is not None and current["version"] == row["version"]:
        return current, False
    if row["status"] != model_registry.SHADOW or model_registry.has_event(con, row["version"], model_registry.ERASED_DATA):
        raise _fail(f"not promoted: v{row['version']} is {row['status']} ({row['reason']})")
    _verify(row, "shadow")
    pointer = model_registry.promote(
        con, aliases, row["version"], config.reason or "shadow on live traffic",
        {"source": source, "metrics": row["metrics"].get("evaluation", {}).get("model", {}), **evidence},
        action="promoted", actor=config.actor,
    )
    return pointer, True


@asset(
    name=SERVED_MODEL,
    partitions_def=DAILY,
    deps=[CANDIDATE_MODEL],
    group_name=GROUP_SERVING,
    kinds={"json"},
    backfill_policy=ONE_RUN_PER_PARTITION,
    code_version=SERVED_MODEL_CODE_VERSION,
    description="The champion alias (version, sha256 and path of the manifest, metrics, reason): the only writer "
    "of aliases/champion.json. action=promote (default) runs only when candidate_model's blocking checks pass (a "
    "rejected candidate leaves the previous champion in place); rollback and shadow_promotion runs are launched "
    "by `factory models rollback`, the service, the rollback_champion job and the champion_guard / "
    "shadow_promoter sensors. Partition: the served version's day.",
)
def served_model(context: AssetExecutionContext, config: ServedModelConfig, registry: RegistryResource,
                 artefacts: ArtefactStore) -> MaterializeResult:
    aliases = artefacts.aliases
    try:
        evidence = json.loads(config.evidence_json or "{}")
    except json.JSONDecodeError as exc:
        raise _fail(f"evidence_json does not parse: {exc}") from exc
    if not isinstance(evidence, dict):
        raise _fail("evidence_json must be a JSON object")
    action = ROLLBACK if context.job_name == ROLLBACK_JOB_NAME else config.action
    with registry.connect() as con:
        if action == ROLLBACK:
            pointer, moved = _rollback(context, config, con, aliases)
        elif action == SHADOW_PROMOTION:
            pointer, moved = _promote_shadow(context, config, con, aliases, artefacts.source_name, evidence)
        else:
            pointer, moved = _promote_candidate(context, config, con, aliases, artefacts.source_name)
    return MaterializeResult(
        data_version=DataVersion(pointer["sha256"]),
        metadata={
            "action": action,
            "actor": pointer.get("actor", config.actor),
            "promoted": moved,  # False: the champion stayed (a backtest, a kept status, already the champion)
            "version": pointer["version"],
            "partition_day": pointer["partition_day"],
            "sha256": pointer["sha256"],
            "path": MetadataValue.path(pointer["path"]),
            "previous_version": MetadataValue.int(pointer["previous_version"]) if pointer.get("previous_version") else MetadataValue.null(),
            "reason": pointer["reason"],
            "metrics": MetadataValue.json(pointer.get("metrics", {})),
        },
    )
