"""Canaries for the two Streamlit internals the app touches: each fails loudly when Streamlit renames the
internal or when touching it stops having the effect the app relies on (so the workaround can be revisited).

- ``script_runner._clean_problem_modules`` (replaced by ``ui.cache``): Streamlit calls it after every
  script run and it clears the Keras session, which empties TensorFlow's caches on every scrub step.
- ``PagesManager.uses_pages_directory`` (reset by ``ui.state.route``): with a ``pages/`` folder next to
  the main script, a fresh server that is first asked for a page runs that file directly with a
  navigation made of the folder's file names; the app's own ``st.navigation`` must take over.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import script_runner
from streamlit.testing.v1 import AppTest

import ui.cache  # noqa: F401  applies the replacement of _clean_problem_modules, as the app does

CLEANUP = "_clean_problem_modules"


def _fake_keras(monkeypatch) -> list[str]:
    """A stand-in ``keras`` module whose ``backend.clear_session`` records its calls."""
    calls: list[str] = []
    fake = types.ModuleType("keras")
    fake.backend = types.SimpleNamespace(clear_session=lambda *a, **k: calls.append("clear_session"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    return calls


def test_streamlit_still_has_the_cleanup_hook():
    assert hasattr(script_runner, CLEANUP), (
        f"streamlit.runtime.scriptrunner.script_runner.{CLEANUP} is gone: ui.cache no longer stops Streamlit "
        "from clearing the Keras session after every run; find where Streamlit now calls "
        "keras.backend.clear_session and update ui.cache")
    source = Path(script_runner.__file__).read_text(encoding="utf-8")
    assert f"_log_if_error({CLEANUP})" in source, f"Streamlit no longer calls {CLEANUP} after a script run"
    assert "clear_session()" in source, (
        "Streamlit no longer clears the Keras session after a script run: ui.cache's replacement can go")


def test_streamlit_calls_the_hook_once_per_script_run(monkeypatch):
    runs: list[int] = []
    monkeypatch.setattr(script_runner, CLEANUP, lambda: runs.append(1))
    at = AppTest.from_string("import streamlit as st\nst.write('hello')", default_timeout=30)
    at.run()
    assert len(runs) == 1, f"expected one call of {CLEANUP} per script run, got {len(runs)}"
    at.run()
    assert len(runs) == 2, f"expected one call of {CLEANUP} per script run, got {len(runs)}"


def test_the_keras_session_survives_a_script_run(monkeypatch):
    calls = _fake_keras(monkeypatch)
    at = AppTest.from_string("import streamlit as st\nst.write('hello')", default_timeout=30)
    at.run()
    at.run()
    assert not at.exception
    assert calls == [], "a script run cleared the Keras session: ui.cache's replacement no longer takes effect"


# ---- pages/ folder ----------------------------------------------------------------------------------

MAIN = """
import streamlit as st
st.session_state["main_runs"] = st.session_state.get("main_runs", 0) + 1
st.navigation([st.Page("pages/one.py", title="One", default=True), st.Page("pages/two.py", title="Two")]).run()
"""
PAGE = """
import streamlit as st
from ui import state
state.route({name!r})
st.write("page {name}")
"""


@pytest.fixture
def mini_app(tmp_path: Path, monkeypatch) -> Path:
    """A main script with ``st.navigation`` over two of the three files of its ``pages/`` folder."""
    (tmp_path / "pages").mkdir()
    (tmp_path / "main.py").write_text(MAIN)
    for name in ("one", "two"):
        (tmp_path / "pages" / f"{name}.py").write_text(PAGE.format(name=name))
    (tmp_path / "pages" / "stray.py").write_text("import streamlit as st\nst.write('stray page')\n")
    monkeypatch.setattr(PagesManager, "uses_pages_directory", PagesManager.uses_pages_directory)  # restored after
    return tmp_path / "main.py"


def test_streamlit_still_enters_pages_folder_mode(mini_app):
    assert hasattr(PagesManager, "uses_pages_directory"), (
        "PagesManager.uses_pages_directory is gone: ui.state.route can no longer leave the pages-folder mode")
    PagesManager.uses_pages_directory = None
    PagesManager(str(mini_app))
    assert PagesManager.uses_pages_directory is True, (
        "Streamlit no longer switches to pages-folder mode for a pages/ folder next to the main script: "
        "ui.state's reset may be unnecessary")


def test_a_page_opened_first_runs_through_the_apps_navigation(mini_app):
    at = AppTest.from_file(str(mini_app), default_timeout=30)
    at.run()  # AppTest starts every run in pages-folder mode, like a fresh server
    assert not at.exception, [e.message for e in at.exception]
    assert at.session_state["main_runs"] == 1 and "page one" in [m.value for m in at.markdown]
    at.switch_page("pages/two.py").run()  # this run opens pages/two.py directly (pages-folder mode)
    assert not at.exception, [e.message for e in at.exception]
    assert "page two" in [m.value for m in at.markdown]
    assert at.session_state["main_runs"] == 2, "the page ran without the main script's st.navigation"
    assert PagesManager.uses_pages_directory is False
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/stray.py")  # pages/ is not a second navigation
