"""scripts/screenshot_asset_graph.py: a clear message and a non-zero exit without Chromium; no browser runs here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from factory_assets_tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "screenshot_asset_graph.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("screenshot_asset_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_chromium_on_path_the_script_says_how_to_install_it_and_fails(tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    out = tmp_path / "graph.png"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": str(empty_bin)},
    )
    assert result.returncode == 2
    assert "apt-get install -y chromium" in result.stderr
    assert "chromium or chromium-browser" in result.stderr
    assert "never downloads a browser" in result.stderr
    assert not out.exists()


def test_find_browser_prefers_chromium_then_chromium_browser(tmp_path):
    module = _load_script()
    only_browser = tmp_path / "a"
    both = tmp_path / "b"
    for folder, names in ((only_browser, ["chromium-browser"]), (both, ["chromium", "chromium-browser"])):
        folder.mkdir()
        for name in names:
            exe = folder / name
            exe.write_text("#!/bin/sh\nexit 0\n")
            exe.chmod(0o755)
    assert module.find_browser(str(only_browser)) == str(only_browser / "chromium-browser")
    assert module.find_browser(str(both)) == str(both / "chromium")
    assert module.find_browser(str(tmp_path / "missing")) is None


def test_every_asset_group_is_opened_in_both_id_spellings_of_the_ui():
    module = _load_script()
    repo = {"name": "__repository__", "location": {"name": "factory_assets.definitions"}}
    nodes = [{"id": "a", "groupName": "raw", "repository": repo}, {"id": "b", "groupName": "raw", "repository": repo},
             {"id": "c", "groupName": "models", "repository": repo}, {"id": "d", "groupName": None, "repository": repo}]
    assert module.expanded_groups(nodes).split(",") == [
        "__repository__@factory_assets.definitions:raw", "global@global:raw",
        "__repository__@factory_assets.definitions:models", "global@global:models",
    ]
