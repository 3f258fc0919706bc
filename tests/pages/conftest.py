"""AppTest helpers for the page tests: the app on the session's tiny runs, and a run that needs trust."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
PAGES = ("overview", "grid", "dynamics", "gates", "weights")


@pytest.fixture
def app_env(runs_root, monkeypatch):
    """ADE_RUNS_ROOT -> the session's tiny runs; working directory = the repository."""
    monkeypatch.setenv("ADE_RUNS_ROOT", str(runs_root))
    monkeypatch.chdir(REPO)
    return runs_root


def open_app(page: str | None = None, query: dict | None = None) -> AppTest:
    """Run explorer.py (optionally with query parameters), then switch to ``pages/<page>.py``; no exception."""
    at = AppTest.from_file(str(REPO / "explorer.py"), default_timeout=90)
    if query:
        at.query_params.update(query)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.message for e in at.exception]
    return at


def run_ok(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [(e.message, e.stack_trace[-4:]) for e in at.exception]
    return at


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def grid_html(at: AppTest, kind: str = "ade-grid") -> str:
    """The HTML of the channel grid (``kind="ade-view"``: the one-channel view) on the page, "" if none."""
    return next((h.proto.body for h in at.get("html") if f'class="{kind} ' in h.proto.body), "")


def png_bytes(size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def trust_root(tmp_path_factory) -> Path:
    """A runs root with one run whose architecture holds a Lambda layer (needs "I trust this file")."""
    import keras

    from core.run.runs import RunWriter, make_manifest, model_weights

    root = tmp_path_factory.mktemp("trust_runs")
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, activation="softmax", name="classifier")(x)
    model = keras.Model(inp, out, name="lambda_net")
    rng = np.random.default_rng(0)
    w = RunWriter(root / "lambda-run")
    w.create(make_manifest("lambda-run", (8, 8, 3), preprocessing={"kind": "scale01"}),
             model=model, probes=(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), np.array([0, 1])))
    w.write_checkpoint(0, model_weights(model))
    w.write_checkpoint(1, model_weights(model))
    return root


def scrub_slider(at):
    """The checkpoint slider (its key changes when the app moves it: ``ui.persist.moved``)."""
    return next(s for s in at.select_slider if s.label == "Checkpoint (mini-epoch)")


def play_toggle(at):
    return next(t for t in at.toggle if t.label == "Play")
