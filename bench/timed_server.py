"""``streamlit run`` with every script run timed server side: ``python bench/timed_server.py app.py [args]``.

Each run (a full rerun or a fragment rerun) appends one JSON line ``{"ms", "fragment", "auto"}``
to the file named by ``$ADE_BENCH_TIMES``; bench/bench_scrub.py reads them.
"""
from __future__ import annotations

import json
import os
import sys
import time

from streamlit.runtime.scriptrunner import script_runner
from streamlit.web import cli

_run_script = script_runner.ScriptRunner._run_script


def _timed(self, rerun_data) -> None:
    t = time.perf_counter()
    try:
        _run_script(self, rerun_data)
    finally:
        rec = {"ms": (time.perf_counter() - t) * 1e3, "fragment": bool(rerun_data.fragment_id_queue),
               "auto": bool(rerun_data.is_auto_rerun)}
        with open(os.environ["ADE_BENCH_TIMES"], "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    script_runner.ScriptRunner._run_script = _timed
    sys.argv = ["streamlit", "run", *sys.argv[1:]]
    sys.exit(cli.main())
