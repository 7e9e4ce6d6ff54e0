"""One measured cycle in its own process (so its peak RSS is its own): ``python _cycle_worker.py JSON``.

JSON: ``mode`` (plain | in_process | multiprocess), ``home`` (a prepared FACTORY_HOME copy), ``shop``
(simulator options), ``day`` (ISO), ``candidate`` (candidate_model config), ``part`` (cycle | ingest | training).
Prints one JSON line: seconds, per-step / per-job detail, import seconds, peak RSS (self and children).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

t_import = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    home, day, shop, cand = Path(spec["home"]), date.fromisoformat(spec["day"]), spec["shop"], spec["candidate"]
    os.environ["FACTORY_HOME"] = str(home)
    os.environ["FACTORY_SOURCE"] = "simulator"
    os.environ.pop("FACTORY_EXECUTOR", None)  # the code location default (in_process); multiprocess: _mp_jobs
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_common.BENCH), str(_common.ROOT), os.environ.get("PYTHONPATH")]))
    part = spec.get("part", "cycle")
    # imports done before the clock starts, in both modes (a long-lived process pays them once)
    import factory_assets.definitions  # noqa: F401
    import implicit  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import_s = time.perf_counter() - t_import
    if spec["mode"] == "plain":
        t = time.perf_counter()
        detail = _common.plain_cycle(home, shop, day, cand, _common.PART_JOBS[part])
        seconds = time.perf_counter() - t
        success = True
    else:
        jobs = _common.PART_JOBS[part]
        t = time.perf_counter()
        detail = _common.dagster_cycle(home, shop, day, cand, jobs, spec["mode"])
        seconds = sum(v["seconds"] for v in detail.values())  # the jobs only, not the instance's start-up
        success = all(v["success"] for v in detail.values())
    print(json.dumps({"mode": spec["mode"], "part": part, "seconds": seconds, "success": success, "detail": detail,
                      "import_s": import_s, "rss": _common.peak_rss_mib()}))


if __name__ == "__main__":
    main()
