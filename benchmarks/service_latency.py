"""Latency and throughput of the recommendation service (``factory serve``), measured from a second process.

    python benchmarks/service_latency.py [--json OUT] [--rates 100,500,1000] [--duration 5]
                                         [--users 20000] [--items 2000] [--factors 64] [--home HOME]

What it does:

1. publishes two synthetic models (``--users`` x ``--items``, ``--factors`` ALS factors, ~20 history items per
   user) as champion aliases in a temporary FACTORY_HOME (or serves ``--home``'s champion as it is);
2. starts ``factory serve`` in a child process on 127.0.0.1 (uvicorn, one worker; served log on, as in
   production) and waits for ``/readyz``;
3. open-loop load from this process with an async client (default: a minimal asyncio HTTP/1.1 keep-alive
   client, ``--client httpx`` for httpx.AsyncClient, whose own CPU cost dominates on 2 cores): requests for random user ids (10 % unknown:
   fallback) at fixed rates for ``--duration`` s each, top-10; latency = send to full response;
   ``lag_p99_ms`` is how late the client itself started requests (a busy client shows up there, not hidden);
4. the same at 500 req/s while the champion alias is switched twice (the watcher verifies and swaps): errors
   and the model versions seen are counted;
5. 1,000 sequential requests from one synchronous client;
6. in-process batch scoring (``LoadedModel.recommend``, batches of 1,000 users, top-10) against the bare
   limit: ``U[batch] @ V.T`` + ``argpartition`` top-k, no history, no filters, no Python per user.

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
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from factory_assets.recsys.artefact import atomic_write_bytes, save_model, write_manifest  # noqa: E402
from factory_assets.recsys.model import BlendModel, ModelParams  # noqa: E402
from factory_assets.service.models import LoadedModel  # noqa: E402

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


def publish(home: Path, model: BlendModel, version: int) -> None:
    root = home / SOURCE
    models = root / "artefacts" / "models"
    models.mkdir(parents=True, exist_ok=True)
    path, digest = save_model(model, models)
    manifest_path, sha = write_manifest({"artefacts": {"served": {"file": path.name, "sha256": digest}}}, models)
    (root / "aliases").mkdir(parents=True, exist_ok=True)
    pointer = {"alias": "champion", "version": version, "path": str(manifest_path), "sha256": sha}
    atomic_write_bytes(root / "aliases" / "champion.json", json.dumps(pointer).encode())


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

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for _, writer in self.idle:
            writer.close()

    async def get(self, path: str, params: dict | None = None):
        if params:
            path += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            conn = await asyncio.open_connection(self.host, self.port)
            self.opened += 1
        reader, writer = conn
        try:
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
    latencies, lags, errors, versions = [], [], 0, {}
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
                else:
                    v = r.json()["model_version"]
                    versions[v] = versions.get(v, 0) + 1
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                errors += 1
                return
            latencies.append(loop.time() - start)

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        side = asyncio.create_task(during(t0)) if during else None
        await asyncio.gather(*tasks)
        if side:
            await side
        elapsed = loop.time() - t0
    out = {"target_rps": rate, "achieved_rps": round(len(latencies) / elapsed, 1), "errors": errors,
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
    loaded = LoadedModel(model, 1, "", "")
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
            "ratio": round(service / bare, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--rates", default="100,500,1000")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: a minimal asyncio HTTP/1.1 client (default) or httpx.AsyncClient")
    parser.add_argument("--home", help="serve this FACTORY_HOME's champion instead of synthetic models (no reload run)")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="service-bench-")
    models = [synthetic_model(args.users, args.items, args.factors, seed) for seed in (1, 2)]
    if args.home:
        home = Path(args.home).resolve()
        from factory_assets.service.models import load_alias

        served = load_alias(home / SOURCE / "aliases").model
        users = [str(u) for u in served.user_ids]
    else:
        home = Path(tmp.name)
        publish(home, models[0], 1)
        served = models[0]
        users = [str(u) for u in served.user_ids]
    users = users + [f"new-user-{i}" for i in range(max(1, len(users) // 9))]  # ~10 % cold start

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FACTORY_ADMIN_TOKEN": TOKEN, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "factory_assets.cli", "serve", "--home", str(home), "--source", SOURCE,
         "--port", str(port), "--log-level", "warning", "--poll-interval", "0.2"],
        cwd=ROOT, env=env,
    )
    results: dict = {"client": args.client, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
                     "model": {"users": len(served.user_ids), "items": len(served.item_ids),
                               "factors": int(served.user_factors.shape[1])}}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service did not become ready")
            time.sleep(0.1)

        results["open_loop"] = []
        for rate in [float(r) for r in args.rates.split(",") if r]:
            row = asyncio.run(open_loop(base, users, rate, args.duration, client_kind=args.client))
            results["open_loop"].append(row)
            print(f"open loop {rate:>6.0f} req/s: achieved {row['achieved_rps']:>7.1f}  p50 {row['p50_ms']:.2f}  "
                  f"p95 {row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}  "
                  f"client lag p99 {row['lag_p99_ms']:.2f} ms", flush=True)

        if not args.home:
            async def switch(t0):
                loop = asyncio.get_running_loop()
                for frac, version in ((0.3, 2), (0.65, 1)):
                    await asyncio.sleep(max(0.0, t0 + frac * args.duration - loop.time()))
                    await asyncio.to_thread(publish, home, models[version - 1], version + 2)

            row = asyncio.run(open_loop(base, users, 500.0, args.duration, during=switch, client_kind=args.client))
            results["during_reload"] = row
            print(f"during reload  500 req/s: p50 {row['p50_ms']:.2f}  p95 {row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  "
                  f"errors {row['errors']}  versions seen {row['versions_seen']}", flush=True)

        row = sequential(base, users)
        results["sequential_1000"] = row
        print(f"sequential x1000: p50 {row['p50_ms']:.2f}  p95 {row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  "
              f"({row['rps']} req/s)  errors {row['errors']}", flush=True)
        metrics = httpx.get(f"{base}/metrics").text
        results["server_reloads"] = next((line.split()[-1] for line in metrics.splitlines()
                                          if line.startswith("factory_serve_reloads_total")), None)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()

    row = batch_scoring(served)
    results["batch_scoring"] = row
    print(f"in-process batch scoring (1000 users, top-10): service {row['service_users_per_s']:,} users/s, "
          f"bare numpy dot + argpartition {row['bare_numpy_users_per_s']:,} users/s (ratio {row['ratio']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
