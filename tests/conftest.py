"""Session-scoped fixture runs: tiny real Keras runs trained once per test session."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# weight layouts learnt by the tests stay out of the user's cache (the processes the tests start inherit it)
os.environ["ADE_LAYOUT_CACHE"] = tempfile.mkdtemp(prefix="ade-test-layouts-")
atexit.register(shutil.rmtree, os.environ["ADE_LAYOUT_CACHE"], True)

SHARED_TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
#: The photos the app offers, shipped in the repository (data/photos/README.md): tests that need a real
#: photo read them from there and fail when one is missing.
BUILTIN_PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"
PHOTO_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """A runs root holding: tiny (SE + BN), tiny-nose (no SE), tiny-nan (NaN from mini-epoch 2)."""
    from tests.fixtures import inject_nan, make_tiny_run

    root = tmp_path_factory.mktemp("runs")
    make_tiny_run(root, "tiny")
    make_tiny_run(root, "tiny-nose", arch={"se": False})
    shutil.copytree(root / "tiny", root / "tiny-nan")
    from core.run.runs import Run

    inject_nan(Run(root / "tiny-nan"), 2)
    return root


@pytest.fixture(scope="session")
def tiny_run(runs_root):
    from core.run.runs import Run

    return Run(runs_root / "tiny")


@pytest.fixture
def shared_testdata() -> Path:
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_TESTDATA} (clone the project with its shared/ folder)")
    return SHARED_TESTDATA
