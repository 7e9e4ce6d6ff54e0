"""Fault injection for sources: a deterministic flaky wrapper and a source that is always broken.

Used by tests and drills of the retry policy: a :class:`FlakySource` fails a reproducible share of calls
with :class:`~factory_assets.data.sources.base.TransientSourceError` (so a retry policy must recover), a
:class:`BrokenSource` always fails with :class:`~factory_assets.data.sources.base.PermanentSourceError` (so a
run must fail fast, without retries).
"""

from __future__ import annotations

import hashlib
import threading
from datetime import date

from factory_assets.data.sources.base import DayBatch, EventSource, PermanentSourceError, TransientSourceError


def failure_draw(seed: int, day: date, attempt: int) -> float:
    """A uniform pseudo-random number in ``[0, 1)`` from ``sha256(seed, day, attempt)`` (same inputs, same number)."""
    digest = hashlib.sha256(f"{seed}:{day.isoformat()}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FlakySource(EventSource):
    """Wraps ``inner`` and fails a deterministic pseudo-random share of :meth:`fetch_day` calls.

    Call ``k`` (0-based) for a given ``day`` on this instance fails with :class:`TransientSourceError` when
    ``failure_draw(seed, day, k) < failure_rate``; otherwise it returns ``inner.fetch_day(day)`` unchanged.
    A failing call does not touch ``inner``, so retrying a day until it succeeds reads ``inner`` exactly once.
    ``name`` and ``window_days`` are those of ``inner``.

    Args:
        inner: the source to wrap.
        failure_rate: share of calls that fail, ``0 <= failure_rate < 1`` (1 would never succeed).
        seed: selects the failure pattern.

    Attributes:
        calls, failures: counts of :meth:`fetch_day` calls and of injected failures so far.

    Raises:
        ValueError: (constructor) ``failure_rate`` outside ``[0, 1)``.
    """

    def __init__(self, inner: EventSource, failure_rate: float, seed: int = 0) -> None:
        if not 0.0 <= failure_rate < 1.0:
            raise ValueError(f"failure_rate must be in [0, 1), got {failure_rate!r}")
        self.inner = inner
        self.name = inner.name
        self.window_days = inner.window_days
        self.failure_rate = float(failure_rate)
        self.seed = int(seed)
        self.calls = 0
        self.failures = 0
        self._attempts: dict[date, int] = {}
        self._lock = threading.Lock()

    def fetch_day(self, day: date) -> DayBatch:
        """``inner.fetch_day(day)``, or :class:`TransientSourceError` on an injected failure."""
        with self._lock:
            attempt = self._attempts.get(day, 0)
            self._attempts[day] = attempt + 1
            self.calls += 1
            fail = failure_draw(self.seed, day, attempt) < self.failure_rate
            if fail:
                self.failures += 1
        if fail:
            raise TransientSourceError(
                f"injected transient failure of source {self.name!r} for {day.isoformat()} "
                f"(attempt {attempt + 1}, failure_rate={self.failure_rate}, seed={self.seed})"
            )
        return self.inner.fetch_day(day)

    def describe(self) -> dict[str, str]:
        """The inner description plus ``fault_injection``."""
        out = dict(self.inner.describe())
        out["fault_injection"] = f"flaky(failure_rate={self.failure_rate}, seed={self.seed})"
        return out


class BrokenSource(EventSource):
    """A source whose :meth:`fetch_day` always raises :class:`PermanentSourceError`.

    Args:
        inner: optional source it stands in for (its ``name``/``window_days`` are kept; never called).
        message: text of the error.
    """

    def __init__(self, inner: EventSource | None = None, message: str = "source is broken (injected fault)") -> None:
        self.inner = inner
        self.name = inner.name if inner is not None else "broken"
        self.window_days = inner.window_days if inner is not None else EventSource.window_days
        self.message = message

    def fetch_day(self, day: date) -> DayBatch:
        """Always raises :class:`PermanentSourceError` naming the source and ``day``."""
        raise PermanentSourceError(f"{self.message} ({self.name!r}, {day.isoformat()})")

    def describe(self) -> dict[str, str]:
        """The inner description (if any) plus ``fault_injection``."""
        out = dict(self.inner.describe()) if self.inner is not None else {"source": self.name}
        out["fault_injection"] = "broken"
        return out
