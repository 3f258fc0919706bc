"""``streamlit run`` with every script run timed server side: ``python bench/timed_server.py app.py [args]``.

Each run (a full rerun or a fragment rerun) appends one JSON line ``{"ms", "fragment", "auto", "gc_ms"}``
(``gc_ms``: time in Python's garbage collector meanwhile, in any thread)
to the file named by ``$ADE_BENCH_TIMES``; bench/bench_scrub.py reads them. With
``$ADE_BENCH_PROFILE`` set, fragment runs are also profiled (cProfile, all runs together) into
that file, rewritten after each run: ``python -m pstats FILE``.
"""
from __future__ import annotations

import cProfile
import gc
import json
import os
import sys
import time

from streamlit.runtime.scriptrunner import script_runner
from streamlit.web import cli

_run_script = script_runner.ScriptRunner._run_script


_PROFILE = cProfile.Profile() if os.environ.get("ADE_BENCH_PROFILE") else None
_GC = {"start": 0.0, "total": 0.0}  # time in Python's garbage collector, all threads


def _gc_timer(phase: str, info: dict) -> None:
    if phase == "start":
        _GC["start"] = time.perf_counter()
    else:
        _GC["total"] += time.perf_counter() - _GC["start"]


def _timed(self, rerun_data) -> None:
    prof = _PROFILE if _PROFILE is not None and rerun_data.fragment_id_queue else None
    gc0 = _GC["total"]
    t = time.perf_counter()
    try:
        if prof is not None:
            prof.runcall(_run_script, self, rerun_data)
        else:
            _run_script(self, rerun_data)
    finally:
        if prof is not None:
            prof.dump_stats(os.environ["ADE_BENCH_PROFILE"])
        rec = {"ms": (time.perf_counter() - t) * 1e3, "fragment": bool(rerun_data.fragment_id_queue),
               "auto": bool(rerun_data.is_auto_rerun), "gc_ms": (_GC["total"] - gc0) * 1e3}
        with open(os.environ["ADE_BENCH_TIMES"], "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    script_runner.ScriptRunner._run_script = _timed
    gc.callbacks.append(_gc_timer)
    sys.argv = ["streamlit", "run", *sys.argv[1:]]
    sys.exit(cli.main())
