"""Two code locations joined by the feature store: each loads alone, imports stay on their side of the seam,
and together they draw one lineage graph.

The import rules are checked twice: statically (every ``import`` statement of every module, by AST, so a lazy
import inside a function counts too) and dynamically (a fresh interpreter imports a location's definitions and
lists ``sys.modules``).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, Definitions

from factory_assets_tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "factory_assets"
DATA_MODULE = "factory_assets.data.defs.definitions"
ML_MODULE = "factory_assets.ml.defs.definitions"


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement of ``path`` (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    return out


def test_the_ml_half_imports_no_dataops_package():
    assert _violations("ml", ("factory_assets.data", "factory_assets.serving")) == []


def test_the_data_half_imports_neither_the_ml_half_nor_model_libraries():
    assert _violations("data", ("factory_assets.ml", "factory_assets.serving", "implicit", "sklearn")) == []


def test_the_feature_store_contract_imports_neither_half():
    assert _violations("feature_store", ("factory_assets.data", "factory_assets.ml", "factory_assets.serving",
                                         "implicit", "sklearn")) == []


def test_platform_imports_no_half():
    assert _violations("platform", ("factory_assets.data", "factory_assets.ml", "factory_assets.serving",
                                    "factory_assets.feature_store")) == []


def _loaded_modules(module: str) -> list[str]:
    code = (f"import sys, json; import {module} as m; from dagster import Definitions; "
            "Definitions.validate_loadable(m.defs); print(json.dumps(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_dataops_location_loads_neither_implicit_nor_sklearn_nor_the_registry():
    modules = _loaded_modules(DATA_MODULE)
    leaked = [m for m in modules if m.split(".")[0] in ("implicit", "sklearn")
              or m.startswith(("factory_assets.ml", "factory_assets.serving"))]
    assert leaked == []
    assert "factory_assets.data.sources.simulator" in modules or "factory_assets.data.sources" in modules


def test_importing_the_mlops_location_loads_no_dataops_module():
    modules = _loaded_modules(ML_MODULE)
    assert [m for m in modules if m.startswith(("factory_assets.data", "factory_assets.serving"))] == []
    assert "factory_assets.feature_store.contract" in modules


def test_workspace_loads_the_two_locations():
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    entries = {e["python_module"]["location_name"]: e["python_module"]["module_name"] for e in workspace["load_from"]}
    assert entries == {"dataops": DATA_MODULE, "mlops": ML_MODULE}


def _location_defs():
    from factory_assets.data.defs import definitions as data
    from factory_assets.ml.defs import definitions as ml

    return data.defs, ml.defs


def test_each_location_declares_the_others_assets_as_external_specs_with_the_same_keys():
    data_defs, ml_defs = _location_defs()
    data_graph, ml_graph = data_defs.resolve_asset_graph(), ml_defs.resolve_asset_graph()
    data_own = {k for k in data_graph.get_all_asset_keys() if data_graph.get(k).is_materializable}
    ml_own = {k for k in ml_graph.get_all_asset_keys() if ml_graph.get(k).is_materializable}
    by_hand_data = {AssetKey(k) for k in ("raw_events", "user_item_daily", "item_daily", "user_features",
                                          "item_features", "online_features", "behaviour_drift", "intraday_features")}
    by_hand_ml = {AssetKey(k) for k in ("training_window", "candidate_model", "served_model", "shadow_evaluation")}
    # live_state: the MLOps location's unpartitioned live path, downstream of intraday_features (external here)
    assert data_own == by_hand_data and ml_own == by_hand_ml | {AssetKey("live_state")}
    assert ml_graph.get(AssetKey("live_state")).parent_keys == {AssetKey("intraday_features"), AssetKey("served_model")}
    assert not ml_graph.get(AssetKey("intraday_features")).is_materializable
    assert by_hand_ml <= data_graph.get_all_asset_keys() - data_own  # external there
    assert by_hand_data & ml_graph.get_all_asset_keys() - ml_own  # the views the ML half reads are external here
    # one graph: the ML location draws the candidate's lineage back into the feature store
    assert {AssetKey("user_item_daily"), AssetKey("item_daily")} <= ml_graph.get(AssetKey("training_window")).parent_keys


def test_each_location_validates_on_its_own():
    for defs in _location_defs():
        Definitions.validate_loadable(defs)


@pytest.mark.parametrize("module", [DATA_MODULE, ML_MODULE])
def test_dagster_validates_each_location_module(module, tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FACTORY_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m", module], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
