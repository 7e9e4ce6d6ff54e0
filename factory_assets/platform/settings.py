"""One typed place for the factory's environment settings and the home-directory layout.

Environment variables (all optional):

=========================  ===================================================================
``FACTORY_HOME``           where everything the factory writes lives (default ``./.factory_home``)
``FACTORY_SOURCE``         ``simulator`` (default), ``online_retail``, ``movielens`` or ``folder``
``FACTORY_SOURCE_PATH``    file or folder for file-based sources
``FACTORY_PARTITION_START`` first daily partition, ISO date (default 1996-01-01: MovieLens starts
                           1996-03-29, Online Retail II 2009-12-01)
``FACTORY_WINDOW_DAYS``    rolling training window in days (default: the source's own setting)
``FACTORY_HISTORY_DAYS``   days of purchase history the learned ranker reads as of each fit, beyond
                           the window where partitions exist (default: the source's own; 0 = off)
``DAGSTER_HOME``           the Dagster instance (default ``$FACTORY_HOME/dagster``)
``FACTORY_EXECUTOR``       ``in_process`` (default), ``multiprocess``, ``celery`` or ``k8s``
                           (see :mod:`factory_assets.platform.executors`; read when definitions load)
``FACTORY_SLOT_WAIT_S``    seconds ``factory run`` waits for the warehouse pool's slot while another
                           live run holds it, before it gives up with an error (default 600)
=========================  ===================================================================

Layout under the home, namespaced per source because partition keys do not say which source a day
came from::

    $FACTORY_HOME/<source>/warehouse.duckdb      raw events, feature views, registry
    $FACTORY_HOME/<source>/artefacts/            content-addressed model files and manifests
    $FACTORY_HOME/<source>/aliases/champion.json the served model's pointer
    $FACTORY_HOME/<source>/live/state.npz        today's additions to the champion (the live path)
    $FACTORY_HOME/dagster/                       the Dagster instance (unless DAGSTER_HOME is set)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path


class SettingsError(ValueError):
    """A factory environment variable has a value the factory cannot use (the message names it)."""


DEFAULT_HOME = ".factory_home"
DEFAULT_SOURCE = "simulator"
DEFAULT_PARTITION_START = "1996-01-01"
SOURCE_NAMES: tuple[str, ...] = ("simulator", "online_retail", "movielens", "folder")
SOURCE_WINDOW_DAYS: dict[str, int] = {"simulator": 28, "online_retail": 28, "movielens": 365, "folder": 28}
DEFAULT_WINDOW_DAYS = 28  # the asset graph's window (lineage, automation look-back): a code constant
# Long purchase history for the ranker (recsys.candidates.long_history): on for the wholesale log, whose
# customers re-order on cycles longer than the window; off where the window already covers it (MovieLens) or
# where old behaviour should fade fast (the simulator's preference shifts).
SOURCE_HISTORY_DAYS: dict[str, int] = {"simulator": 0, "online_retail": 90, "movielens": 0, "folder": 0}
HOLDOUT_DAYS = 7
MAX_DAYS = 3660  # longest window or history in days (ten years): beyond it dates overflow, nothing is gained

# The project's instance configuration (pools, telemetry), copied into a fresh Dagster home.
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
PROJECT_WORKSPACE_YAML = PROJECT_DAGSTER_YAML.with_name("workspace.yaml")  # the two code locations


def factory_home() -> Path:
    """Absolute path of ``FACTORY_HOME`` (not created)."""
    return Path(os.environ.get("FACTORY_HOME", DEFAULT_HOME)).expanduser().resolve()


def source_name() -> str:
    """The default source, from ``FACTORY_SOURCE``.

    Raises:
        SettingsError (a ValueError): for an unknown name (the message lists the known ones).
    """
    name = os.environ.get("FACTORY_SOURCE", DEFAULT_SOURCE)
    if name not in SOURCE_NAMES:
        raise SettingsError(f"FACTORY_SOURCE={name!r} is not one of {', '.join(SOURCE_NAMES)}")
    return name


def source_path() -> str:
    """``FACTORY_SOURCE_PATH`` or the empty string (the simulator needs none)."""
    return os.environ.get("FACTORY_SOURCE_PATH", "")


EXECUTOR_NAMES: tuple[str, ...] = ("in_process", "multiprocess", "celery", "k8s")
DEFAULT_EXECUTOR = "in_process"


def executor_name() -> str:
    """The code location's executor, from ``FACTORY_EXECUTOR`` (default ``in_process``).

    Raises:
        SettingsError (a ValueError): for an unknown name (the message lists the known ones).
    """
    name = os.environ.get("FACTORY_EXECUTOR", DEFAULT_EXECUTOR).strip() or DEFAULT_EXECUTOR
    if name not in EXECUTOR_NAMES:
        raise SettingsError(f"FACTORY_EXECUTOR={name!r} is not one of {', '.join(EXECUTOR_NAMES)}")
    return name


STORAGE_NAMES: tuple[str, ...] = ("duckdb", "parquet")


def storage_name() -> str | None:
    """The warehouse storage a *new* home gets, from ``FACTORY_STORAGE`` (``duckdb`` or ``parquet``), or None when
    unset (then ``duckdb``).  A home that already holds a warehouse keeps its storage
    (:mod:`factory_assets.feature_store.storage`); read when a run opens the warehouse.

    Raises:
        SettingsError (a ValueError): for an unknown name.
    """
    name = os.environ.get("FACTORY_STORAGE", "").strip()
    if not name:
        return None
    if name not in STORAGE_NAMES:
        raise SettingsError(f"FACTORY_STORAGE={name!r} is not one of {', '.join(STORAGE_NAMES)}")
    return name


DEFAULT_PARALLEL_RUNS = 4


def parallel_runs() -> int:
    """How many runs ``factory run --executor multiprocess|celery|k8s`` keeps in flight: ``FACTORY_PARALLEL_RUNS``
    (default 4; 1..64).

    Raises:
        SettingsError (a ValueError): for anything else.
    """
    return _whole("FACTORY_PARALLEL_RUNS", DEFAULT_PARALLEL_RUNS, 64, "runs")


ALS_GPU_MODES = ("off", "auto", "on")


def als_gpu() -> bool:
    """Train ALS on the GPU? From ``FACTORY_ALS_GPU``: ``off`` (default), ``auto`` (when implicit has CUDA), ``on``.

    Off by default: GPU factors are not bit-identical to CPU ones, and a manifest promises a bit-for-bit
    retrain; the choice is recorded as ``use_gpu`` in every manifest.

    Raises:
        SettingsError (a ValueError): for an unknown mode.
        SettingsError: ``on`` while implicit was built without CUDA (the PyPI wheels are CPU-only).
    """
    mode = os.environ.get("FACTORY_ALS_GPU", "off").strip().lower() or "off"
    if mode not in ALS_GPU_MODES:
        raise SettingsError(f"FACTORY_ALS_GPU={mode!r} is not one of {', '.join(ALS_GPU_MODES)}")
    if mode == "off":
        return False
    import implicit.gpu

    if mode == "on" and not implicit.gpu.HAS_CUDA:
        raise SettingsError("FACTORY_ALS_GPU=on but implicit was built without CUDA (pip wheels are CPU-only)")
    return bool(implicit.gpu.HAS_CUDA)


DEFAULT_SLOT_WAIT_S = 600.0


def slot_wait_seconds() -> float:
    """Seconds ``factory run`` waits for a pool slot held by another live run: ``FACTORY_SLOT_WAIT_S`` (default 600).

    Raises:
        SettingsError (a ValueError): if it is not a number of seconds in ``0..86400``.
    """
    raw = os.environ.get("FACTORY_SLOT_WAIT_S", "").strip()
    if not raw:
        return DEFAULT_SLOT_WAIT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        raise SettingsError(f"FACTORY_SLOT_WAIT_S={raw!r} is not a number of seconds in 0..86400")
    return seconds


def partition_start() -> str:
    """First daily partition key (ISO date), from ``FACTORY_PARTITION_START``.

    Raises:
        SettingsError (a ValueError): if it is not an ISO ``YYYY-MM-DD`` date, or not between 1970-01-01 and
            the last complete UTC day (a later start has no partition yet; Dagster's keys need 4-digit years).
    """
    raw = os.environ.get("FACTORY_PARTITION_START", DEFAULT_PARTITION_START)
    try:
        day = date.fromisoformat(raw)
    except ValueError as exc:
        raise SettingsError(f"FACTORY_PARTITION_START={raw!r} is not an ISO date (YYYY-MM-DD)") from exc
    last = datetime.now(timezone.utc).date() - timedelta(days=1)
    if not date(1970, 1, 1) <= day <= last:
        raise SettingsError(f"FACTORY_PARTITION_START={raw!r} must lie between 1970-01-01 and the last complete UTC "
                            f"day, {last.isoformat()}")
    return day.isoformat()


def window_days(source: str | None = None) -> int:
    """Rolling training window in days: ``FACTORY_WINDOW_DAYS`` or the source's own default.

    Resolved when a run starts (``ModelPolicy``), never when definitions load: the graph's own window is
    :data:`DEFAULT_WINDOW_DAYS`.
    """
    if "FACTORY_WINDOW_DAYS" in os.environ:
        raw = os.environ["FACTORY_WINDOW_DAYS"]
        try:
            days = int(raw)
        except ValueError as exc:
            raise SettingsError(f"FACTORY_WINDOW_DAYS={raw!r} is not a whole number of days") from exc
        if days <= HOLDOUT_DAYS + 7:
            raise SettingsError(f"FACTORY_WINDOW_DAYS={raw!r}: the training window must be longer than "
                                f"{HOLDOUT_DAYS + 7} days (a {HOLDOUT_DAYS}-day test and a week to train on)")
        if days > MAX_DAYS:
            raise SettingsError(f"FACTORY_WINDOW_DAYS={raw!r}: at most {MAX_DAYS} days")
    else:
        days = SOURCE_WINDOW_DAYS[source or source_name()]
    return days


def history_days(source: str | None = None) -> int:
    """Days of purchase history (as of each fit) for the ranker: ``FACTORY_HISTORY_DAYS`` or the source's own.

    Raises:
        SettingsError (a ValueError): if ``FACTORY_HISTORY_DAYS`` is not a whole number in ``0..MAX_DAYS``.
    """
    raw = os.environ.get("FACTORY_HISTORY_DAYS")
    if raw is None or not raw.strip():
        return SOURCE_HISTORY_DAYS[source or source_name()]
    try:
        days = int(raw)
    except ValueError:
        days = -1
    if not 0 <= days <= MAX_DAYS:
        raise SettingsError(f"FACTORY_HISTORY_DAYS={raw!r} is not a whole number of days in 0..{MAX_DAYS}")
    return days


def registry_url() -> str | None:
    """The model registry's SQLAlchemy URL from ``FACTORY_REGISTRY_URL`` (e.g. ``postgresql+psycopg2://...``),
    or None when unset or blank: the registry is then the SQLite file ``<home>/<source>/registry.db``.

    Raises:
        SettingsError (a ValueError): if the value has no ``dialect://`` scheme.
    """
    raw = os.environ.get("FACTORY_REGISTRY_URL", "").strip()
    if not raw:
        return None
    if "://" not in raw:
        raise SettingsError(f"FACTORY_REGISTRY_URL={raw!r} is not a SQLAlchemy URL (dialect[+driver]://...)")
    return raw


HOME_FORMAT = "2"  # 2: the model registry in its own store (registry.db), not in the warehouse
FORMAT_MARKER = ".factory-format"


class HomeFormatError(SettingsError):
    """A factory home written by an older, incompatible layout."""


@dataclass(frozen=True)
class HomeLayout:
    """Paths of one source's namespace under a factory home."""

    home: Path
    source: str

    @property
    def root(self) -> Path:
        return self.home / self.source

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def lake(self) -> Path:
        """The Parquet warehouse (``parquet`` storage, :mod:`factory_assets.feature_store.storage`)."""
        return self.root / "lake"

    @property
    def artefacts(self) -> Path:
        return self.root / "artefacts"

    def held_storage(self) -> str | None:
        """The warehouse storage this namespace holds (``duckdb``, ``parquet``), or None before its first write."""
        if self.warehouse.exists():
            return "duckdb"
        if self.lake.is_dir():
            return "parquet"
        return None

    def storage(self, wanted: str | None = None) -> str:
        """The storage to use here: the one the namespace holds, else ``wanted``, else ``duckdb``.

        Raises:
            SettingsError: ``wanted`` differs from what the namespace holds (nothing is converted).
        """
        held = self.held_storage()
        if held is not None and wanted is not None and held != wanted:
            raise SettingsError(f"{self.root} holds a {held} warehouse, not {wanted}: use another home for {wanted} "
                                f"storage, or drop --storage / unset FACTORY_STORAGE to keep this one")
        return held or wanted or "duckdb"

    @property
    def aliases(self) -> Path:
        return self.root / "aliases"

    @property
    def live_state(self) -> Path:
        """The live path's state file, ``<root>/live/state.npz`` (written by ``ml.live_state``, read by the
        service next to the champion; not created here)."""
        return self.root / "live" / "state.npz"

    @property
    def format_marker(self) -> Path:
        return self.root / FORMAT_MARKER

    def check_format(self) -> None:
        """Refuse a namespace written by an older layout (nothing is created or changed).

        Raises:
            HomeFormatError: ``warehouse.duckdb`` exists but the format marker does not (a home from before the
                model registry moved to its own store); it is not migrated.
        """
        if self.warehouse.exists() and not self.format_marker.exists():
            raise HomeFormatError(
                f"{self.root} was written by an older factory_assets (model registry inside warehouse.duckdb) and "
                f"is not migrated: use a new home (--home or FACTORY_HOME) or move this one away"
            )

    def ensure(self) -> "HomeLayout":
        """Create the namespace's folders and format marker (raises :class:`HomeFormatError` for an old home)."""
        self.check_format()
        for path in (self.root, self.artefacts, self.aliases):
            path.mkdir(parents=True, exist_ok=True)
        if not self.format_marker.exists():
            self.format_marker.write_text(HOME_FORMAT + "\n", encoding="utf-8")
        return self


def dagster_home_path(home: Path | None = None) -> Path:
    """Where the Dagster instance lives: ``$DAGSTER_HOME`` when set, else ``<home>/dagster`` (absolute; nothing
    is created)."""
    path = Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else (home or factory_home()) / "dagster"
    return path.expanduser().resolve()


def dagster_home(home: Path | None = None) -> Path:
    """The Dagster instance directory, created and seeded with the project's ``dagster.yaml``.

    ``$DAGSTER_HOME`` wins when set; otherwise ``<home>/dagster``.  An existing ``dagster.yaml`` there is
    left alone (it is the user's).  Also sets ``DAGSTER_HOME`` in this process so Dagster finds it.

    Raises:
        FileNotFoundError: if the project's ``dagster.yaml`` is missing (a broken checkout).
    """
    path = dagster_home_path(home)
    path.mkdir(parents=True, exist_ok=True)
    target = path / "dagster.yaml"
    if not target.exists():
        if not PROJECT_DAGSTER_YAML.exists():
            raise FileNotFoundError(f"project instance configuration not found at {PROJECT_DAGSTER_YAML}")
        shutil.copyfile(PROJECT_DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def _whole(name: str, default: int, high: int, unit: str) -> int:
    """``name`` from the environment as a whole number in ``1..high`` (``default`` when unset or blank).

    Raises:
        SettingsError: naming the variable, its value and the range.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= high:
        raise SettingsError(f"{name}={raw!r} is not a whole number of {unit} in 1..{high}")
    return value


def _seconds(name: str, default: int) -> int:
    return _whole(name, default, 86400, "seconds")


def automation_interval_s() -> int:
    """Seconds between two ticks of the automation sensors: ``FACTORY_AUTOMATION_INTERVAL_S`` (default 30).

    A sensor's interval is part of its definition, so this is read when definitions load (like
    :func:`partition_start` and :func:`executor_name`).
    """
    return _seconds("FACTORY_AUTOMATION_INTERVAL_S", 30)


def alert_interval_s() -> int:
    """Seconds between two ticks of the alert sensors: ``FACTORY_ALERT_INTERVAL_S`` (default 30; read at load)."""
    return _seconds("FACTORY_ALERT_INTERVAL_S", 30)


ALERT_WEBHOOK_ENV = "FACTORY_ALERT_WEBHOOK_URL"
UI_URL_ENV = "FACTORY_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:3000"


def alert_webhook_url() -> str:
    """``FACTORY_ALERT_WEBHOOK_URL`` or the empty string (alerts off); read when an alert sensor ticks."""
    return os.environ.get(ALERT_WEBHOOK_ENV, "")


def ui_url() -> str:
    """``FACTORY_UI_URL``: the Dagster UI's base URL for links in alerts (default ``http://127.0.0.1:3000``)."""
    return os.environ.get(UI_URL_ENV, DEFAULT_UI_URL)


def service_settings() -> dict[str, str | None]:
    """The recommendation service's settings (read when ``factory serve`` starts), None where unset:

    ``admin_token`` (``FACTORY_ADMIN_TOKEN``: bearer token of the admin calls; unset = every admin call gets 401),
    ``landing`` (``FACTORY_SERVE_LANDING``: where served logs land as raw events), ``catalogue`` /
    ``excluded`` (``FACTORY_SERVE_CATALOGUE`` / ``FACTORY_SERVE_EXCLUDED``: files of item ids, one per line).
    """
    return {
        "admin_token": os.environ.get("FACTORY_ADMIN_TOKEN") or None,
        "landing": os.environ.get("FACTORY_SERVE_LANDING") or None,
        "catalogue": os.environ.get("FACTORY_SERVE_CATALOGUE") or None,
        "excluded": os.environ.get("FACTORY_SERVE_EXCLUDED") or None,
    }
