"""Latency and throughput of the recommendation service (``factory serve``), measured from a second process.

    python benchmarks/service_latency.py [--json OUT] [--rates 100,500,1000] [--duration 5]
                                         [--model ranker|blend] [--users N] [--items M] [--factors 64]
                                         [--home HOME [--source SOURCE]]

What it does:

1. publishes two synthetic models as champion aliases in a temporary FACTORY_HOME (or serves ``--home``'s
   champion as it is).  ``--model ranker`` (the default, the factory's default model kind: the learned ranker
   on the request path) builds a two-stage model: ALS factors, ~20 history items per user, recency,
   co-purchase neighbours and popularity-trend sources, and a logistic-regression ranker with fixed seeded
   coefficients; default size 4,000 users x 3,600 items (Online Retail's scale).  ``--model blend`` is the
   ALS-formula model, default 20,000 users x 2,000 items.  The server's precompute time and size (the
   ranker's per-user candidate lists) and its resident memory after loading are reported;
2. starts ``factory serve`` in a child process on 127.0.0.1 (uvicorn, one worker; served log on, as in
   production) and waits for ``/readyz``;
3. open-loop load from this process with an async client (default: a minimal asyncio HTTP/1.1 keep-alive
   client, ``--client httpx`` for httpx.AsyncClient, whose own CPU cost dominates on 2 cores): requests for random user ids (10 % unknown:
   fallback) at fixed rates for ``--duration`` s each, top-10; latency = send to full response;
   ``lag_p99_ms`` is how late the client itself started requests (a busy client shows up there, not hidden);
4. the same at 500 req/s while the champion alias is switched twice (the watcher verifies, precomputes and
   swaps; the second switch waits until the first is served): errors, the model versions seen and the time from
   publishing to serving each version are counted (``--reload-duration`` s, default ``max(duration, 30)``;
   the artefacts are written before the run, only the alias flips during it, as a promotion does);
5. 1,000 sequential requests from one synchronous client;
6. in-process batch scoring (``LoadedModel.recommend``, batches of 1,000 users, top-10) against the bare
   limit: ``U[batch] @ V.T`` + ``argpartition`` top-k, no history, no filters, no Python per user.

The load average (``os.getloadavg``) before and after is written too: on a shared machine the figures are
pessimistic; re-run on a quiet one.

Targets (on 2 cores): p99 <= 5 ms at 500 req/s, zero errors during reload, sequential p99 <= 10 ms.  The
client and the server share the machine's cores, so the figures include the client's CPU cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from factory_assets.ml.recsys.artefact import atomic_write_bytes, save_model, write_manifest  # noqa: E402
from factory_assets.ml.recsys.candidates import SourceArrays, item_neighbours  # noqa: E402
from factory_assets.ml.recsys.model import BlendModel, ModelParams  # noqa: E402
from factory_assets.ml.recsys.ranker import FEATURES, LinearRanker, RankerPart  # noqa: E402
from factory_assets.serving.scorer import LoadedModel  # noqa: E402

TOKEN = "bench-token"
SOURCE = "simulator"


def synthetic_model(n_users: int, n_items: int, factors: int, seed: int) -> BlendModel:
    rng = np.random.default_rng(seed)
    per_user = 20
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.integers(0, n_items, size=n_users * per_user)
    hist = sp.csr_matrix((rng.random(len(rows)).astype(np.float32) + 0.1, (rows, cols)), shape=(n_users, n_items))
    hist.sum_duplicates()
    return BlendModel(
        user_ids=np.asarray([f"user{i}" for i in range(n_users)]),
        item_ids=np.asarray([f"item{i}" for i in range(n_items)]),
        user_factors=rng.normal(size=(n_users, factors)).astype(np.float32),
        item_factors=rng.normal(size=(n_items, factors)).astype(np.float32),
        history=hist.astype(np.float32),
        popularity=rng.gamma(1.0, size=n_items).astype(np.float32),
        als_weight=1.0,
        params=ModelParams(factors=factors, als_weight=1.0),
    )


def synthetic_ranker_model(n_users: int, n_items: int, factors: int, seed: int, n_candidates: int = 50) -> BlendModel:
    """``synthetic_model`` plus the ranker's sources and a seeded linear ranker (a two-stage model, as trained).

    Sources: recency = a random decay in (0, 1] on each history item, ``days_count`` 1-3 per history item,
    converters = distinct users per item (a fifth of them in each of the last two weeks), top-30 cosine
    co-purchase neighbours of the history (:func:`item_neighbours`).  Ranker: standardisation by fixed
    plausible means/scales is not needed for timing; ``coef`` ~ N(0, 1) over :data:`FEATURES`, intercept 0.
    """
    base = synthetic_model(n_users, n_items, factors, seed)
    rng = np.random.default_rng(seed + 100)
    binary = base.history.copy()
    binary.data[:] = 1.0
    recency = base.history.copy()
    recency.data = (rng.random(len(recency.data)) * 0.99 + 0.01).astype(np.float32)
    days_count = base.history.copy()
    days_count.data = rng.integers(1, 4, size=len(days_count.data)).astype(np.float32)
    converters = np.asarray(binary.sum(axis=0)).ravel().astype(np.float32)
    sources = SourceArrays(
        recency=recency, converters=converters,
        converters_7d=rng.binomial(converters.astype(np.int64), 0.2).astype(np.float32),
        converters_prev_7d=rng.binomial(converters.astype(np.int64), 0.2).astype(np.float32),
        neighbours=item_neighbours(binary, 30), days_count=days_count,
        item_repeat_rate=(rng.random(n_items) * 0.5).astype(np.float32),
        user_days=rng.integers(1, 30, size=n_users).astype(np.float32),
    )
    f = len(FEATURES)
    linear = LinearRanker(coef=rng.normal(size=f), intercept=0.0, mean=np.zeros(f), scale=np.ones(f))
    return replace(base, ranker=RankerPart(sources=sources, linear=linear, n_candidates=n_candidates),
                   als_weight=0.0, params=ModelParams(factors=factors, als_weight=0.0, n_candidates=n_candidates))


def server_rss_mib(pid: int) -> dict:
    """Resident (VmRSS) and peak (VmHWM) memory of a process, MiB (Linux ``/proc``; empty elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[{"VmRSS": "rss_mib", "VmHWM": "peak_rss_mib"}[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


def save(home: Path, model: BlendModel) -> tuple[Path, str]:
    """Write the model's artefact and manifest (what training does); return ``(manifest path, sha256)``."""
    models = home / SOURCE / "artefacts" / "models"
    models.mkdir(parents=True, exist_ok=True)
    path, digest = save_model(model, models)
    return write_manifest({"artefacts": {"served": {"file": path.name, "sha256": digest}}}, models)


def point(home: Path, saved: tuple[Path, str], version: int) -> None:
    """Point the champion alias at a saved manifest (what a promotion does)."""
    manifest_path, sha = saved
    (home / SOURCE / "aliases").mkdir(parents=True, exist_ok=True)
    pointer = {"alias": "champion", "version": version, "path": str(manifest_path), "sha256": sha}
    atomic_write_bytes(home / SOURCE / "aliases" / "champion.json", json.dumps(pointer).encode())


def publish(home: Path, model: BlendModel, version: int) -> None:
    point(home, save(home, model), version)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(lat_s: list[float]) -> dict:
    if not lat_s:
        return {"n": 0}
    a = np.asarray(lat_s) * 1000
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3)}


class RawClient:
    """A minimal keep-alive HTTP/1.1 GET client on asyncio streams (a pool of connections).

    httpx's async client costs about 1-2 ms of CPU per request, which on a 2-core machine shared with the
    server measures the client more than the service; this one costs tens of microseconds.  It answers
    objects with ``status_code`` and ``json()`` like httpx's, for the few calls the benchmark makes.
    """

    class Response:
        def __init__(self, status: int, body: bytes) -> None:
            self.status_code, self.body = status, body

        def json(self):
            return json.loads(self.body)

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list = []
        self.opened = 0
        self.stale = 0  # pooled connections the server had closed (idle keep-alive timeout), retried once

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for _, writer in self.idle:
            writer.close()

    async def get(self, path: str, params: dict | None = None):
        if params:
            path += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        conn = self.idle.pop() if self.idle else None
        pooled = conn is not None
        if conn is None:
            conn = await asyncio.open_connection(self.host, self.port)
            self.opened += 1
        reader, writer = conn
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if not pooled or getattr(exc, "partial", b""):
                    raise
                writer.close()  # the server closed this idle connection: a fresh one, as HTTP clients do for a GET
                self.stale += 1
                reader, writer = conn = await asyncio.open_connection(self.host, self.port)
                self.opened += 1
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(int(l.split(b":", 1)[1]) for l in lines[1:] if l[:15].lower() == b"content-length:")
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append(conn)
        return self.Response(status, body)


def make_client(kind: str, base: str):
    if kind == "httpx":
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        return httpx.AsyncClient(base_url=base, limits=limits, timeout=10)
    return RawClient(base)


async def open_loop(base: str, users: list[str], rate: float, duration: float, during=None, client_kind: str = "raw") -> dict:
    """Fire requests at ``rate``/s for ``duration`` s (not waiting for answers); ``during(t)`` runs alongside."""
    rng = np.random.default_rng(int(rate))
    n = int(rate * duration)
    latencies, lags, errors, versions, kinds = [], [], 0, {}, {}
    async with make_client(client_kind, base) as client:
        await asyncio.gather(*(client.get(f"/recommendations/{users[0]}") for _ in range(16)))  # warm the pool
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(i: int):
            nonlocal errors
            due = t0 + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            start = loop.time()
            lags.append(start - due)
            try:
                r = await client.get(f"/recommendations/{users[rng.integers(len(users))]}", params={"k": 10})
                if r.status_code != 200:
                    errors += 1
                    kinds[f"http {r.status_code}"] = kinds.get(f"http {r.status_code}", 0) + 1
                else:
                    v = r.json()["model_version"]
                    versions[v] = versions.get(v, 0) + 1
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
                errors += 1
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                return
            latencies.append(loop.time() - start)

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        side = asyncio.create_task(during(t0)) if during else None
        await asyncio.gather(*tasks)
        if side:
            await side
        elapsed = loop.time() - t0
        stale = getattr(client, "stale", None)
    out = {"target_rps": rate, "achieved_rps": round(len(latencies) / elapsed, 1), "errors": errors, "error_kinds": kinds,
           "stale_connections_retried": stale,
           **percentiles(latencies), "lag_p99_ms": round(float(np.percentile(np.asarray(lags) * 1000, 99)), 3)}
    if during:
        out["versions_seen"] = {str(k): v for k, v in sorted(versions.items())}
    return out


def sequential(base: str, users: list[str], n: int = 1000) -> dict:
    rng = np.random.default_rng(7)
    lat, errors = [], 0
    with httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(20):
            client.get(f"/recommendations/{users[0]}")
        for _ in range(n):
            start = time.perf_counter()
            r = client.get(f"/recommendations/{users[rng.integers(len(users))]}", params={"k": 10})
            lat.append(time.perf_counter() - start)
            errors += r.status_code != 200
    return {"errors": errors, **percentiles(lat), "rps": round(n / sum(lat), 1)}


def batch_scoring(model: BlendModel, batch: int = 1000, rounds: int = 5) -> dict:
    """In-process ``LoadedModel.recommend`` throughput (users/s) vs a bare dot + argpartition top-10."""
    started = time.perf_counter()
    loaded = LoadedModel(model, 1, "", "")
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(3)
    users = [str(u) for u in model.user_ids]
    picks = [[users[i] for i in rng.integers(len(users), size=batch)] for _ in range(rounds)]
    loaded.recommend(picks[0][:10], 10)
    start = time.perf_counter()
    for p in picks:
        loaded.recommend(p, 10)
    service = rounds * batch / (time.perf_counter() - start)
    U, V = model.user_factors, model.item_factors
    rows = [rng.integers(len(users), size=batch) for _ in range(rounds)]
    start = time.perf_counter()
    for r in rows:
        s = U[r] @ V.T
        np.argpartition(-s, 9, axis=1)[:, :10]
    bare = rounds * batch / (time.perf_counter() - start)
    return {"batch": batch, "service_users_per_s": round(service), "bare_numpy_users_per_s": round(bare),
            "ratio": round(service / bare, 3), "load_s": round(load_s, 3), "precompute_s": round(loaded.precompute_s, 3),
            "precompute_mib": round(loaded.precompute_bytes / 2**20, 2)}


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample ``name{labels}`` in Prometheus text, None when absent."""
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[-1])
    return None


def wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 120.0) -> float:
    started = time.monotonic()
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() - started > timeout_s:
            raise SystemExit("the service did not become ready")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--rates", default="100,500,1000")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--reload-duration", type=float, default=None, help="seconds of the reload run (default max(duration, 30))")
    parser.add_argument("--model", choices=("ranker", "blend"), default="ranker",
                        help="synthetic champion: the learned ranker (default) or the ALS-formula blend")
    parser.add_argument("--users", type=int, default=None, help="default 4000 (ranker) / 20000 (blend)")
    parser.add_argument("--items", type=int, default=None, help="default 3600 (ranker) / 2000 (blend)")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: a minimal asyncio HTTP/1.1 client (default) or httpx.AsyncClient")
    parser.add_argument("--home", help="serve this FACTORY_HOME's champion instead of synthetic models (no reload run)")
    parser.add_argument("--source", default=SOURCE, help="the source under --home (default simulator)")
    args = parser.parse_args(argv)
    n_users = args.users or (4000 if args.model == "ranker" else 20000)
    n_items = args.items or (3600 if args.model == "ranker" else 2000)
    reload_duration = args.reload_duration or max(args.duration, 30.0)

    tmp = tempfile.TemporaryDirectory(prefix="service-bench-")
    source = args.source if args.home else SOURCE
    results: dict = {"client": args.client, "load_average_before": [round(v, 2) for v in os.getloadavg()],
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}
    if args.home:
        home = Path(args.home).resolve()
        from factory_assets.serving.scorer import load_alias

        served = load_alias(home / source / "aliases").model
        models = [served]
    else:
        home = Path(tmp.name)
        make = synthetic_ranker_model if args.model == "ranker" else synthetic_model
        models = [make(n_users, n_items, args.factors, seed) for seed in (1, 2)]
        publish(home, models[0], 1)
        served = models[0]
    users = [str(u) for u in served.user_ids]
    users = users + [f"new-user-{i}" for i in range(max(1, len(users) // 9))]  # ~10 % cold start
    results["model"] = {"kind": "ranker" if served.ranker is not None else "blend", "home": str(home) if args.home else None,
                        "users": len(served.user_ids), "items": len(served.item_ids), "factors": int(served.user_factors.shape[1])}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FACTORY_ADMIN_TOKEN": TOKEN, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "factory_assets.cli", "serve", "--home", str(home), "--source", source,
         "--port", str(port), "--log-level", "warning", "--poll-interval", "0.2"],
        cwd=ROOT, env=env,
    )
    try:
        ready_s = wait_ready(base, server)
        text = httpx.get(f"{base}/metrics").text
        results["server_start"] = {"ready_s": round(ready_s, 3),
                                   "champion_load_s": metric(text, "factory_serve_model_load_seconds", '{role="champion"}'),
                                   "precomputed_mib": round((metric(text, "factory_serve_model_precomputed_bytes", '{role="champion"}') or 0) / 2**20, 2),
                                   **server_rss_mib(server.pid)}
        print(f"server ready in {ready_s:.2f} s (champion load {results['server_start']['champion_load_s']} s, "
              f"precomputed {results['server_start']['precomputed_mib']} MiB), RSS {results['server_start'].get('rss_mib')} MiB "
              f"(peak {results['server_start'].get('peak_rss_mib')})", flush=True)

        results["open_loop"] = []
        for rate in [float(r) for r in args.rates.split(",") if r]:
            row = asyncio.run(open_loop(base, users, rate, args.duration, client_kind=args.client))
            results["open_loop"].append(row)
            print(f"open loop {rate:>6.0f} req/s: achieved {row['achieved_rps']:>7.1f}  p50 {row['p50_ms']:.2f}  "
                  f"p95 {row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}  "
                  f"client lag p99 {row['lag_p99_ms']:.2f} ms", flush=True)

        if not args.home:
            swaps: list[dict] = []
            saved = [save(home, m) for m in models]  # artefacts first (training's work), outside the measured run

            async def switch(t0):
                loop = asyncio.get_running_loop()
                await asyncio.sleep(max(0.0, t0 + 0.2 * reload_duration - loop.time()))
                for version, manifest in ((3, saved[1]), (4, saved[0])):
                    published = loop.time()
                    point(home, manifest, version)
                    while loop.time() - published < 30:  # the next switch only once this version is served
                        r = await asyncio.to_thread(httpx.get, f"{base}/readyz", timeout=5)
                        if r.json()["champion"]["version"] == version:
                            break
                        await asyncio.sleep(0.05)
                    swaps.append({"version": version, "publish_to_served_s": round(loop.time() - published, 3)})

            row = asyncio.run(open_loop(base, users, 500.0, reload_duration, during=switch, client_kind=args.client))
            row["swaps"] = swaps
            results["during_reload"] = row
            print(f"during reload  500 req/s: p50 {row['p50_ms']:.2f}  p95 {row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  "
                  f"errors {row['errors']}  versions seen {row['versions_seen']}  swaps {swaps}", flush=True)

        row = sequential(base, users)
        results["sequential_1000"] = row
        print(f"sequential x1000: p50 {row['p50_ms']:.2f}  p95 {row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  "
              f"({row['rps']} req/s)  errors {row['errors']}", flush=True)
        metrics = httpx.get(f"{base}/metrics").text
        results["server_reloads"] = metric(metrics, "factory_serve_reloads_total")
        results["server_end"] = server_rss_mib(server.pid)
        print(f"server RSS at the end {results['server_end'].get('rss_mib')} MiB (peak {results['server_end'].get('peak_rss_mib')})")
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()

    row = batch_scoring(served)
    results["batch_scoring"] = row
    print(f"in-process batch scoring (1000 users, top-10): service {row['service_users_per_s']:,} users/s, "
          f"bare numpy dot + argpartition {row['bare_numpy_users_per_s']:,} users/s (ratio {row['ratio']}); "
          f"model load {row['load_s']} s (precompute {row['precompute_s']} s, {row['precompute_mib']} MiB)")
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average before {results['load_average_before']}, after {results['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
