"""``champion_verified``: re-verify the live champion (it only observes; the ``champion_guard`` sensor recovers).

The check is not partitioned: it judges whatever ``aliases/champion.json`` names *now*.  It passes when

1. the alias parses (a JSON object with an integer ``version``, a manifest ``path`` and a hex ``sha256``),
2. the manifest matches that sha256 and the served artefact matches the sha256 the manifest lists
   (:func:`factory_assets.ml.recsys.artefact.load_manifest_model`, which never unpickles), and
3. the model scores a seeded sample of its own users with finite scores and a full top-10 of distinct items.

The check never changes anything: it reports ``passed=False`` with the failure and the version a rollback
would restore (``rollback_target``; None when no earlier champion is eligible).  The recovery is a run: the
``champion_guard`` sensor (:mod:`factory_assets.ml.defs.sensors`) verifies the champion on every tick and, when
it fails, requests a ``served_model`` run with ``action=rollback`` (actor ``auto-rollback``) to the previous
eligible champion (the registry's champion stack: never rejected, not trained on erased data, and itself
passing steps 2-3) -- so the catalog's latest ``served_model`` materialization names the restored version.

:func:`verify_champion` and :func:`verify_model` are the pure verifications (files only, no warehouse);
:func:`choose_auto_rollback` picks the target (registry reads only) and :func:`auto_rollback` performs the
recovery directly on a registry connection (outside Dagster: scripts, tests).
"""

import json
import re
from pathlib import Path

import numpy as np
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check
from sqlalchemy.engine import Connection

from factory_assets.ml.defs.served import SERVED_MODEL, apply_rollback
from factory_assets.ml.recsys.artefact import ArtefactIntegrityError, load_manifest_model
from factory_assets.ml.recsys.metrics import top_k
from factory_assets.ml import registry
from factory_assets.ml.resources import ArtefactStore, RegistryResource
from factory_assets.platform.settings import HomeLayout

CHAMPION_VERIFIED = "champion_verified"
AUTO_ROLLBACK_ACTOR = "auto-rollback"
SAMPLE_USERS = 100  # users scored by the smoke test
K = 10
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AliasError(ValueError):
    """``champion.json`` exists but is not a valid pointer (unreadable JSON or missing/ill-typed fields)."""


def read_champion_alias(layout: HomeLayout) -> dict | None:
    """The champion pointer, validated; None when there is no champion yet.

    Raises:
        AliasError: the file is not JSON, not an object, or lacks an int ``version`` / str ``path`` / hex
            ``sha256``.
    """
    try:
        pointer = registry.read_alias(layout.aliases)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AliasError(f"{registry.alias_path(layout.aliases)} does not parse: {exc}") from exc
    if pointer is None:
        return None
    if not isinstance(pointer, dict):
        raise AliasError(f"{registry.alias_path(layout.aliases)} is not a JSON object")
    problems = []
    if not isinstance(pointer.get("version"), int) or isinstance(pointer.get("version"), bool):
        problems.append("version is not an integer")
    if not isinstance(pointer.get("path"), str) or not pointer.get("path"):
        problems.append("path is missing")
    if not isinstance(pointer.get("sha256"), str) or not _SHA256.match(pointer["sha256"]):
        problems.append("sha256 is not a hex sha256")
    if problems:
        raise AliasError(f"{registry.alias_path(layout.aliases)}: " + "; ".join(problems))
    return pointer


def verify_model(
    manifest_path: str | Path, manifest_sha256: str, sample_users: int = SAMPLE_USERS, k: int = K, seed: int = 0
) -> tuple[bool, str]:
    """Verify one model version's files and smoke-test it.

    Loads the ``served`` artefact through its manifest (both sha256 digests checked), then scores
    ``min(sample_users, n_users)`` of its users (seeded sample, without replacement): every score row must be
    finite and its top-``k`` must hold ``min(k, n_items)`` distinct items.

    Returns:
        ``(ok, reason)``: ``reason`` is ``"verified: ..."`` or names the first problem found.  Never raises
        for a missing, tampered or unreadable file (that is a failed verification).
    """
    try:
        model = load_manifest_model(manifest_path, "served", manifest_sha256)
    except (ArtefactIntegrityError, FileNotFoundError, KeyError, ValueError, OSError) as exc:
        return False, f"artefact verification failed: {type(exc).__name__}: {exc}"
    n_users, n_items = len(model.user_ids), len(model.item_ids)
    if n_users == 0 or n_items == 0:
        return False, f"the model has {n_users} users and {n_items} items"
    rows = np.random.default_rng(seed).choice(n_users, size=min(sample_users, n_users), replace=False)
    scores = model.scores(rows)
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        return False, f"{int(bad.sum())} of {len(rows)} sampled users got non-finite scores"
    best = top_k(scores, k)
    need = min(k, n_items)
    short = sum(1 for r in best if len(set(r[r >= 0].tolist())) < need)
    if short:
        return False, f"{short} of {len(rows)} sampled users got fewer than {need} distinct items"
    return True, f"verified: manifest and served artefact match their sha256; {len(rows)} users scored, full top-{need}s"


def verify_champion(layout: HomeLayout, sample_users: int = SAMPLE_USERS, k: int = K) -> tuple[bool, str]:
    """Re-verify the live champion named by ``<home>/<source>/aliases/champion.json`` (files only).

    Returns:
        ``(ok, reason)``.  ``(True, "no champion yet ...")`` when there is no alias: nothing is served, so
        nothing can be wrong with it.  ``ok`` is False when the alias does not parse or :func:`verify_model`
        fails for the manifest it names.
    """
    try:
        pointer = read_champion_alias(layout)
    except AliasError as exc:
        return False, f"champion alias is invalid: {exc}"
    if pointer is None:
        return True, "no champion yet: nothing to verify"
    ok, reason = verify_model(pointer["path"], pointer["sha256"], sample_users, k)
    return ok, f"champion v{pointer['version']}: {reason}"


def choose_auto_rollback(con: Connection, layout: HomeLayout) -> dict:
    """The version an automatic rollback restores: the newest of :func:`registry.rollback_candidates` that
    passes :func:`verify_model`.

    The current champion is the alias's version, or (when the alias does not parse) the registry's version
    with status ``champion``.

    Returns:
        ``{"rolled_back_from": int, "rolled_back_to": int, "skipped": [{"version", "reason"}]}``.
    Raises:
        LookupError: there is no current champion, or no earlier champion is eligible and verifiable (the
            message lists what was skipped and why).
    """
    try:
        pointer = read_champion_alias(layout)
    except AliasError:
        pointer = None
    if pointer is not None:
        current = int(pointer["version"])
    else:
        frame = registry.versions(con)
        champions = frame[frame["status"] == registry.CHAMPION]["version"].tolist()
        if not champions:
            raise LookupError("there is no champion to roll back from")
        current = int(max(champions))
    skipped = []
    target = None
    for version in registry.rollback_candidates(con, current):
        row = registry.version_row(con, version)
        ok, reason = verify_model(row["manifest_path"], row["manifest_sha256"])
        if ok:
            target = version
            break
        skipped.append({"version": version, "reason": reason})
    if target is None:
        detail = "; ".join(f"v{s['version']}: {s['reason']}" for s in skipped) or "the champion stack holds none"
        raise LookupError(f"no earlier eligible champion to roll back to from v{current} ({detail})")
    return {"rolled_back_from": current, "rolled_back_to": target, "skipped": skipped}


def auto_rollback_reason(failure: str) -> str:
    """The reason an automatic rollback records (``registry.rollback`` prefixes ``rollback from vN by ACTOR: ``)."""
    return f"champion_verified failed: {failure}"


def auto_rollback(con: Connection, layout: HomeLayout, failure: str, actor: str = AUTO_ROLLBACK_ACTOR) -> dict:
    """Replace a champion that failed verification by the previous eligible champion that passes it, directly
    (no Dagster run: the ``champion_guard`` sensor requests a ``served_model`` run instead).

    An unparsable alias is moved aside to ``champion.json.corrupt-<UTC stamp>`` before the new one is written.

    Returns:
        ``{"rolled_back_from", "rolled_back_to", "pointer", "skipped": [{"version", "reason"}]}``.
    Raises:
        LookupError: see :func:`choose_auto_rollback`; nothing changes then.
    """
    choice = choose_auto_rollback(con, layout)
    pointer = apply_rollback(con, layout.aliases, auto_rollback_reason(failure), actor, choice["rolled_back_to"])
    return {**choice, "pointer": pointer}


@asset_check(
    asset=SERVED_MODEL,
    name=CHAMPION_VERIFIED,
    blocking=False,
    description="The live champion's alias parses, its manifest and served artefact match their sha256 and it "
    "scores a sample of its users with finite, full top-10s. Observes only: on failure the champion_guard sensor "
    "requests a served_model rollback run (actor auto-rollback).",
)
def champion_verified(context: AssetCheckExecutionContext, artefacts: ArtefactStore,
                      registry: RegistryResource) -> AssetCheckResult:
    """Verify the champion; report ``passed=False`` with the failure and the rollback target (changes nothing)."""
    layout = artefacts.layout.ensure()
    ok, reason = verify_champion(layout)
    try:
        pointer = read_champion_alias(layout)
    except AliasError:
        pointer = None
    version = MetadataValue.int(pointer["version"]) if pointer else MetadataValue.null()
    if ok:
        return AssetCheckResult(passed=True, description=reason, metadata={"champion_version": version})
    context.log.error(f"champion verification failed: {reason}")
    with registry.connect() as con:
        try:
            choice = choose_auto_rollback(con, layout)
            target, problem, skipped = choice["rolled_back_to"], None, choice["skipped"]
        except LookupError as exc:
            target, problem, skipped = None, str(exc), []
    return AssetCheckResult(
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=f"{reason}. " + (f"champion_guard rolls back to v{target}." if target is not None
                                     else f"No automatic rollback: {problem}"),
        metadata={
            "failure": reason,
            "champion_version": version,
            "rollback_target": MetadataValue.int(target) if target is not None else MetadataValue.null(),
            "rollback_error": problem or "",
            "skipped": MetadataValue.json(skipped),
        },
    )
