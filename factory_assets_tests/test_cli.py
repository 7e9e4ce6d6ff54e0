"""``factory run``: argument checks in-process, and one real run whose stdout must be exactly one JSON document."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from factory_assets import cli
from factory_assets_tests.helpers import REPO_ROOT


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for name in ("FACTORY_SOURCE", "FACTORY_SOURCE_PATH", "FACTORY_WINDOW_DAYS", "FACTORY_HISTORY_DAYS",
                 "FACTORY_PARTITION_START", "FACTORY_EXECUTOR", "FACTORY_ALS_GPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--start", "2024-11-02", "--end", "2024-11-01"], "is after --end"),
        (["--start", "1990-01-01", "--end", "1990-03-01"], "before the first partition"),
        (["--start", "2024-01-01", "--end", "2999-01-01"], "after the last complete UTC day"),
        (["--start", "2024-11-01", "--end", "2024-11-10"], "needs a full 28-day window"),
        (["--start", "2024-11-31", "--end", "2024-12-10"], "is not an ISO date"),
        (["--source", "online_retail", "--start", "2011-10-01", "--end", "2011-11-30"], "needs --path"),
        (["--source", "movielens", "--path", "/nonexistent/ratings.csv", "--start", "2011-10-01", "--end", "2011-11-30"], "does not exist"),
    ],
)
def test_bad_ranges_and_sources_are_refused_with_a_clear_message(argv, message, capsys):
    assert cli.main(["run", *argv]) == 2
    out, err = capsys.readouterr()
    assert message in err and out == ""


def test_with_json_a_refused_input_is_still_one_document_on_stdout(capsys):
    assert cli.main(["run", "--json", "--start", "2024-11-02", "--end", "2024-11-01"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": "factory: --start 2024-11-02 is after --end 2024-11-01"}
    assert "is after --end" in err


@pytest.mark.parametrize(
    ("name", "value"),
    [("FACTORY_SOURCE", "bogus"), ("FACTORY_PARTITION_START", "notadate"), ("FACTORY_WINDOW_DAYS", "abc"),
     ("FACTORY_WINDOW_DAYS", "7"), ("FACTORY_HISTORY_DAYS", "-3"), ("FACTORY_EXECUTOR", "slurm"), ("FACTORY_ALS_GPU", "maybe"),
     ("FACTORY_PARTITION_START", "2999-01-01"), ("FACTORY_PARTITION_START", "0001-01-01"),
     ("FACTORY_HISTORY_DAYS", "800000"), ("FACTORY_WINDOW_DAYS", "99999999999")],
)
def test_a_bad_setting_is_one_line_naming_it_not_a_traceback(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    for command in (["run", "--json"], ["demo", "--json"]):
        assert cli.main(command) == 2
        out, err = capsys.readouterr()
        error = json.loads(out)["error"]
        assert error.startswith(f"factory: {name}={value!r}")
        assert "Traceback" not in err and err.strip().endswith(error.removeprefix("factory: "))
    assert cli.main(["dev", "--help"]) == 2


def test_an_executor_whose_package_is_missing_is_one_line(monkeypatch, capsys):
    from factory_assets.platform import executors

    monkeypatch.setitem(executors.OPTIONAL_EXECUTORS, "celery", ("no_such_module_xyz", "x", "celery", "dagster-celery"))
    monkeypatch.setenv("FACTORY_EXECUTOR", "celery")
    assert cli.main(["run", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["error"].startswith("factory: FACTORY_EXECUTOR=celery needs the dagster-celery package")
    assert "Traceback" not in err


def test_source_flag_overrides_a_bad_factory_source(monkeypatch, capsys):
    monkeypatch.setenv("FACTORY_SOURCE", "bogus")
    assert cli.main(["run", "--source", "online_retail", "--start", "2011-10-01", "--end", "2011-11-30"]) == 2
    assert "needs --path" in capsys.readouterr().err  # got past the settings: the flag's source was used


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("abc", "not a comma-separated"), ("99", "in 0..10")])
def test_demo_refuses_bad_strengths_before_running_anything(text, message, capsys):
    assert cli.main(["demo", "--strengths", text]) == 2
    assert message in capsys.readouterr().err


def test_demo_refuses_a_real_log_without_its_file_and_a_path_for_the_simulator(tmp_path, capsys):
    cases = [
        (["demo", "--source", "online_retail"], "needs --path to its file"),
        (["demo", "--source", "online_retail", "--path", str(tmp_path / "none.parquet")], "no such file"),
        (["demo", "--source", "online_retail", "--path", str(tmp_path)], "a directory"),
        (["demo", "--source", "online_retail", "--path", str(tmp_path), "--strengths", "1"], "--strengths is for the simulator"),
        (["demo", "--path", str(tmp_path)], "--path is for --source online_retail"),
    ]
    for argv, message in cases:
        assert cli.main([*argv, "--json", "--home", str(tmp_path / "h")]) == 2, argv
        out, err = capsys.readouterr()
        assert message in json.loads(out)["error"] and message in err and "Traceback" not in err
    assert not (tmp_path / "h").exists()  # nothing ran


def test_factory_run_stops_at_the_first_failed_ingest_day(tmp_path, capsys):
    bad = tmp_path / "movies.csv"  # a MovieLens file without ratings: every day would fail alike
    bad.write_text("movieId,title,genres\n1,Toy Story (1995),Animation\n", encoding="utf-8")
    args = ["run", "--json", "--source", "movielens", "--path", str(bad), "--start", "2018-01-01", "--end", "2018-12-31",
            "--home", str(tmp_path / "h")]
    assert cli.main(args) == 1
    summary = json.loads(capsys.readouterr().out)
    assert [(r["job"], r["partition"], r["success"]) for r in summary["runs"]] == [("daily_ingest", "2018-01-01", False)]
    assert summary["runs"][0]["error"].startswith("raw_events: ")  # the reason, not only a False
    assert summary["served_model"] is None and summary["trained"] == []
    assert summary["partitions"] == []  # nothing was materialised (not the 365 days asked for)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_factory_run_json_prints_one_document_and_serves_a_model(tmp_path):
    env = {**os.environ, "FACTORY_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "FACTORY_WINDOW_DAYS": "15"}
    out = subprocess.run(
        [sys.executable, "-m", "factory_assets.cli", "run", "--start", "2024-10-01", "--end", "2024-10-16", "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # the whole of stdout is one JSON document
    assert set(summary["evaluation"]["baselines"]) == {"popularity", "repeat"}
    assert summary["evaluation"]["model"]["ndcg_at_10"] > max(b["ndcg_at_10"] for b in summary["evaluation"]["baselines"].values())
    assert summary["partitions"] == [f"2024-10-{d:02d}" for d in range(1, 17)]
    assert [t["partition"] for t in summary["trained"]] == ["2024-10-15", "2024-10-16"]
    assert summary["served_model"]["version"] == 2 and len(summary["served_model"]["sha256"]) == 64
    assert {c["name"] for c in summary["checks"]} == {"window_complete", "beats_baseline", "not_worse_than_champion", "safe_to_serve"}
    assert summary["checks"][0] == {"name": "window_complete", "passed": True, "reason": "all 15 days of every feature view present"}
    assert summary["registry"] == {"versions": 2, "promotions": 2}
    assert all(r["success"] for r in summary["runs"]) and len(summary["runs"]) == 18
    assert (tmp_path / "dagster" / "dagster.yaml").exists()  # the instance was seeded with the project's config


def test_the_default_simulator_run_ends_yesterday_on_automations_timeline():
    from datetime import date

    from factory_assets.platform.partitions import DAILY

    assert cli.default_simulator_range(date(2026, 12, 7)) == (date(2026, 10, 12), date(2026, 12, 6), date(2026, 11, 17))
    start, end, shift = cli.default_simulator_range()
    assert end.isoformat() == DAILY.get_last_partition_key()  # the newest partition automation materialises
    assert (end - start).days + 1 == 56 and (end - shift).days == 19  # as 2024-10-06..11-30 with the shift on 11-11


def test_a_home_from_before_the_registry_had_its_own_store_is_refused_in_one_line(tmp_path, capsys):
    home = tmp_path / "old-home"
    (home / "simulator").mkdir(parents=True)
    (home / "simulator" / "warehouse.duckdb").write_bytes(b"")  # an older layout: no format marker beside it
    assert cli.main(["run", "--home", str(home), "--start", "2024-10-01", "--end", "2024-10-28"]) == 2
    out, err = capsys.readouterr()
    assert "was written by an older factory_assets" in err and str(home / "simulator") in err and out == ""
    assert err.count("\n") == 1
    assert sorted(p.name for p in (home / "simulator").iterdir()) == ["warehouse.duckdb"]  # nothing was touched


@pytest.mark.parametrize("command", [["models", "list"], ["models", "rollback", "--reason", "x"], ["serve", "--port", "1"]])
def test_every_command_refuses_an_old_home_in_one_line(tmp_path, capsys, command):
    home = tmp_path / "old-home"
    (home / "simulator").mkdir(parents=True)
    (home / "simulator" / "warehouse.duckdb").write_bytes(b"")
    assert cli.main([*command, "--home", str(home)]) == 2
    out, err = capsys.readouterr()
    assert "was written by an older factory_assets" in err and err.count("\n") == 1
    assert sorted(p.name for p in (home / "simulator").iterdir()) == ["warehouse.duckdb"]
