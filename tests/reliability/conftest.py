"""Shared helpers of the reliability suite: run copies, one shared engine, AppTest sessions, tallies.

Everything builds on the session's ``tiny`` fixture run (tests/conftest.py); nothing here trains.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "explorer.py"  # the script; app.py is its server (st.App)
APP_TIMEOUT = 120  # first script run imports TensorFlow and builds the engine; the machine is shared


# ---- run copies -------------------------------------------------------------------------------


def copy_tiny(tiny_path: Path, dst: Path) -> Path:
    """A copy of the tiny fixture run (without its derived cache) at ``dst``."""
    shutil.copytree(tiny_path, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def add_checkpoints(run_path: Path, upto: int) -> None:
    """Give a run checkpoints up to ``upto`` by perturbing its last one deterministically.

    Each new checkpoint k scales every float array by ``1 + 0.15 * (k - last)`` and adds seeded
    noise, so every checkpoint gives visibly different activations (what the concurrency tests need
    to tell a wrong checkpoint from the right one).
    """
    from core.run.runs import Run, RunWriter, read_npz_weights

    run = Run(run_path)
    ckpts = run.checkpoints()
    last = ckpts[-1]
    base = read_npz_weights(last.path)
    w = RunWriter(run_path)
    hist = run.history()
    for k in range(last.mini_epoch + 1, upto + 1):
        rng = np.random.default_rng(k)
        arrays = {}
        for name, a in base.items():
            if a.dtype.kind == "f" and not name.endswith("moving_variance"):
                s = 1.0 + 0.15 * (k - last.mini_epoch)
                a = (a * s + rng.normal(0, 0.02, a.shape)).astype(a.dtype)
            arrays[name] = a
        w.write_checkpoint(k, arrays)
        row = hist.iloc[-1].to_dict()
        row.update(mini_epoch=k, images_seen=float(row["images_seen"]) + 128 * (k - last.mini_epoch))
        hist = w.append_history(row)


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny8_root(tmp_path_factory, tiny_run) -> Path:
    """A runs root with ``tiny8``: the tiny run with checkpoints 0..7 (one per concurrent session)."""
    root = tmp_path_factory.mktemp("rel_runs8")
    copy_tiny(tiny_run.path, root / "tiny8")
    add_checkpoints(root / "tiny8", 7)
    return root


@pytest.fixture(scope="session")
def tiny8(tiny8_root):
    from core.run.runs import Run

    return Run(tiny8_root / "tiny8")


@pytest.fixture(scope="session")
def engine8(tiny8):
    """ONE RunEngine for tiny8, shared by every test (as ``st.cache_resource`` shares it in the app)."""
    from core.engine.engine import RunEngine

    return RunEngine(tiny8)


# ---- AppTest ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _full_error_details():
    """Exceptions in AppTest runs carry their message and traceback (config.toml redacts them for visitors)."""
    from streamlit.testing.v1.util import patch_config_options

    with patch_config_options({"client.showErrorDetails": "full"}):
        yield



def new_app(**query: Any):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    return at


@contextlib.contextmanager
def one_runtime_for_threads():
    """Let several AppTest sessions run in threads, like sessions of one Streamlit server.

    ``AppTest._run`` installs a mock ``Runtime`` singleton when a script run starts and removes
    it when it ends, and patches the ``global.appTest`` option around the run: with sessions in
    threads, the first to finish pulls the runtime from under the others ("Runtime hasn't been
    created!"). Here the harness writes its singleton to a private subclass, and one shared mock
    runtime (as one server has) is installed for the duration.
    """
    from unittest.mock import MagicMock

    import streamlit.testing.v1.app_test as app_test_mod
    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1.util import patch_config_options

    class _HarnessRuntime(Runtime):  # AppTest's own set/reset lands here
        _instance = None

    rt = MagicMock(spec=Runtime)
    rt.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    rt.dataframe_source_mgr = DataframeSourceManager()
    rt.cache_storage_manager = MemoryCacheStorageManager()
    bidi = BidiComponentManager()
    bidi.discover_and_register_components(start_file_watching=False)
    rt.bidi_component_registry = bidi
    mp = pytest.MonkeyPatch()
    saved = Runtime._instance
    mp.setattr(app_test_mod, "Runtime", _HarnessRuntime)
    Runtime._instance = rt
    try:
        with patch_config_options({"global.appTest": True}):
            yield
    finally:
        Runtime._instance = saved
        mp.undo()


def texts(at, kind: str) -> list[str]:
    """Every message of one kind (error / warning / info / markdown / caption) in page and sidebar."""
    return [str(e.value) for e in at.get(kind)] + [str(e.value) for e in at.sidebar.get(kind)]


def messages(at) -> list[str]:
    return texts(at, "error") + texts(at, "warning") + texts(at, "info")


def exceptions(at) -> list[str]:
    """Exception elements, with their traceback, for assertion messages."""
    return [f"{e.message}\n" + "\n".join(e.stack_trace) for e in at.exception]


def assert_no_exception(at, what: str = "") -> None:
    exc = exceptions(at)
    assert not exc, f"{what}: the page raised:\n" + "\n----\n".join(exc)


# ---- memory ---------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(re.findall(r"\d+", line)[0])
    return 0


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so the next reading is the peak of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.seconds = time.perf_counter() - self.t0


def table(rows: list[tuple], header: tuple[str, ...]) -> str:
    """A plain fixed-width text table for ``pytest -s`` output."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
