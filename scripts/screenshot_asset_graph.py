"""Regenerate docs/asset-graph.png: the code location's asset lineage graph in the Dagster UI, via headless Chromium.

    python scripts/screenshot_asset_graph.py [--out docs/asset-graph.png] [--url-path /asset-groups]

It uses the browser of Debian's ``chromium`` package (``apt-get install chromium``) found on ``PATH``
(``chromium`` or ``chromium-browser``) and never downloads one: without it the script exits with status 2 and
says so.  It starts ``dagster-webserver`` on a free loopback port against this repository's ``workspace.yaml``,
with a temporary ``DAGSTER_HOME`` and ``FACTORY_HOME`` (nothing of yours is read or written), waits until the
code location has loaded, takes the screenshot, stops the server and prints where the PNG is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser")
DEFAULT_OUT = REPO_ROOT / "docs" / "asset-graph.png"
# The global asset lineage graph of Dagster 1.13's UI (every group of the code location).
DEFAULT_URL_PATH = "/asset-groups"
MISSING_BROWSER = (
    "screenshot_asset_graph: no Chromium on PATH (looked for {names}).\n"
    "Install Debian's package and run again:  apt-get install -y chromium\n"
    "(this script never downloads a browser)"
)
ASSET_NODES_QUERY = "{ assetNodes { id groupName repository { name location { name } } } }"


def find_browser(path: str | None = None) -> str | None:
    """Absolute path of the first of ``chromium`` / ``chromium-browser`` on ``path`` (default ``$PATH``)."""
    for name in BROWSERS:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webserver_command(port: int) -> list[str]:
    """``dagster-webserver`` of this interpreter's environment, serving the repository's workspace on loopback."""
    return [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO_ROOT / "workspace.yaml")]


def wait_for_assets(base_url: str, timeout_s: float, server: subprocess.Popen) -> list[dict]:
    """Poll the webserver's GraphQL API until the code location lists its assets; the asset nodes
    (``id``, ``groupName``, ``repository {name, location {name}}``).

    Raises:
        RuntimeError: if the server exits or the assets do not appear within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    body = json.dumps({"query": ASSET_NODES_QUERY}).encode()
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with status {server.returncode} before it served the assets")
        try:
            request = urllib.request.Request(f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                nodes = json.load(response).get("data", {}).get("assetNodes") or []
            if nodes:
                return nodes
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Dagster UI at {base_url} did not list any asset within {timeout_s:.0f} s")


def expanded_groups(nodes: list[dict]) -> str:
    """The UI's ``expanded`` query parameter that opens every asset group of the graph.

    The lineage page collapses groups when there are several; a group's id is ``repo@location:group``
    (or ``global@global:group`` when the UI merges code locations), so both spellings are listed.
    """
    ids: list[str] = []
    for node in nodes:
        group = node.get("groupName")
        if not group:
            continue
        repo = node["repository"]
        for gid in (f"{repo['name']}@{repo['location']['name']}:{group}", f"global@global:{group}"):
            if gid not in ids:
                ids.append(gid)
    return ",".join(ids)


def mark_nux_seen(dagster_home: Path) -> None:
    """Tell the UI its first-visit "join the community" dialog was seen (``$DAGSTER_HOME/.nux/nux.yaml``)."""
    (dagster_home / ".nux").mkdir(parents=True, exist_ok=True)
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")


def screenshot(
    browser: str, url: str, out: Path, width: int, height: int, budget_ms: int, profile: Path, scale: float = 1.0
) -> None:
    """Headless Chromium renders ``url`` for ``budget_ms`` of virtual time and writes a PNG to ``out``.

    The page is laid out on a ``width / scale`` x ``height / scale`` CSS-pixel viewport and the PNG is
    ``width`` x ``height`` pixels: a scale below 1 fits the whole graph at the UI's default zoom.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--force-device-scale-factor={scale}",
        f"--window-size={round(width / scale)},{round(height / scale)}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed (status {result.returncode}): {result.stderr[-1500:]}")


def shrink_png(path: Path) -> None:
    """Re-encode the PNG with a 256-colour palette (a UI screenshot stays sharp and shrinks several-fold)."""
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with matplotlib; without it the PNG is kept as Chromium wrote it
        return
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(path, optimize=True)


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the webserver's process group, SIGKILL it if it lingers."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    parser.add_argument("--url-path", default=DEFAULT_URL_PATH, help=f"UI page to capture (default {DEFAULT_URL_PATH})")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1400, help="PNG height; 1400 fits every group at the UI's default zoom")
    parser.add_argument("--scale", type=float, default=1.0, help="device scale factor (CSS pixel -> PNG pixel)")
    parser.add_argument("--budget-ms", type=int, default=15000, help="virtual time the page gets to render (ms)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the code location to load")
    args = parser.parse_args(argv)

    browser = find_browser()
    if browser is None:
        print(MISSING_BROWSER.format(names=" or ".join(BROWSERS)), file=sys.stderr)
        return 2

    out = args.out.resolve()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="asset-graph-") as tmp:
        tmp_path = Path(tmp)
        dagster_home = tmp_path / "dagster"
        dagster_home.mkdir()
        shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
        mark_nux_seen(dagster_home)
        env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "FACTORY_HOME": str(tmp_path / "factory")}
        log = (tmp_path / "webserver.log").open("w")
        server = subprocess.Popen(
            webserver_command(port), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            nodes = wait_for_assets(base_url, args.timeout, server)
            url = f"{base_url}{args.url_path}?{urllib.parse.urlencode({'expanded': expanded_groups(nodes)})}"
            print(f"Dagster UI up at {base_url} with {len(nodes)} assets; rendering {url}", file=sys.stderr)
            raw = tmp_path / "raw.png"
            screenshot(browser, url, raw, args.width, args.height, args.budget_ms, tmp_path / "profile", args.scale)
            shrink_png(raw)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(raw), out)
        except RuntimeError as exc:
            log.flush()
            tail = (tmp_path / "webserver.log").read_text(errors="replace")[-2000:]
            print(f"screenshot_asset_graph: {exc}\n--- webserver log (tail) ---\n{tail}", file=sys.stderr)
            return 1
        finally:
            stop(server)
            log.close()
    print(f"wrote {out} ({out.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
