"""Every page on runs of models the app has never seen: an imported Sequential with a nested SE backbone and
no recorded probe set, and an imported model with Lambda code (trust asked on every page)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.pages.conftest import REPO, open_app, run_ok, texts

ALL_PAGES = ("overview", "grid", "dynamics", "gates", "weights", "inspector", "compare")


def _backbone():
    import keras

    i = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255, name="scale")(i)
    c = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(x)
    s = keras.layers.GlobalAveragePooling2D(name="se_squeeze")(c)
    h = keras.layers.Dense(3, activation="relu", name="se_reduce")(s)
    g = keras.layers.Dense(6, activation="sigmoid", name="se_expand")(h)
    e = keras.layers.Multiply(name="se_excite")([c, keras.layers.Reshape((1, 1, 6))(g)])
    return keras.Model(i, e, name="backbone")


@pytest.fixture(scope="module")
def foreign_root(tmp_path_factory) -> Path:
    """Imported runs without a recorded probe set: ``nested`` (Sequential around a Functional SE backbone)
    and ``lambda`` (a Lambda layer: needs trust)."""
    import keras

    from core.training.importer import import_checkpoints

    base = tmp_path_factory.mktemp("foreign")
    root = base / "runs"
    keras.utils.set_random_seed(0)
    nested = keras.Sequential([keras.Input((16, 16, 3)), _backbone(), keras.layers.GlobalAveragePooling2D(name="gap"),
                               keras.layers.Dense(3, activation="softmax", name="head")], name="nested")
    lam = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, name="c"),
                            keras.layers.Lambda(lambda t: t * 2.0, name="double"), keras.layers.Flatten(name="f"),
                            keras.layers.Dense(3, activation="softmax", name="out")], name="lam")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 16, 16, 3)).astype("float32"), rng.integers(0, 3, 16)
    for name, model in (("nested", nested), ("lambda", lam)):
        src = base / name
        src.mkdir()
        model.compile("adam", "sparse_categorical_crossentropy")
        for epoch in (1, 2):
            model.fit(x, y, epochs=1, batch_size=8, verbose=0)
            model.save(src / f"epoch_{epoch}.keras")
        import_checkpoints(src, root, name, trust=name == "lambda")
    return root


@pytest.fixture
def foreign_env(foreign_root, monkeypatch):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(foreign_root))
    monkeypatch.chdir(REPO)
    return foreign_root


def _select(at, run: str) -> None:
    at.sidebar.selectbox(key="w_run").set_value(run)
    run_ok(at)


def test_every_page_on_an_imported_run_without_a_probe_set(foreign_env) -> None:
    run_dir = foreign_env / "nested"
    assert not (run_dir / "probes.npz").exists()
    at = open_app()
    _select(at, "nested")
    for page in ALL_PAGES:
        at.switch_page(f"pages/{page}.py")
        run_ok(at)
        assert at.title[0].value, page
        assert "no probe images" not in texts(at, "error") + texts(at, "info"), page
    # the sidebar image stands in for the probe set, stored beside the run, the import's files untouched
    assert (run_dir / "probes.user.npz").exists() and not (run_dir / "probes.npz").exists()
    at.switch_page("pages/gates.py")
    run_ok(at)
    assert len(at.get("vega_lite_chart")) >= 1
    at.switch_page("pages/overview.py")
    run_ok(at)
    assert "backbone/se_expand" in str([d.value for d in at.dataframe])


def test_trust_is_asked_on_every_page(foreign_env) -> None:
    at = open_app()
    _select(at, "lambda")
    for page in ALL_PAGES:
        at.switch_page(f"pages/{page}.py")
        run_ok(at)
        if page != "compare":  # compare asks for two runs before it loads any model
            assert "Lambda" in texts(at, "warning"), page
    at.switch_page("pages/grid.py")
    run_ok(at)
    at.checkbox(key="w_trust:lambda").check()
    for page in ALL_PAGES:
        at.switch_page(f"pages/{page}.py")
        run_ok(at)
        assert "Lambda" not in texts(at, "warning"), page


def test_scaling_is_shown_and_changed_in_the_app(foreign_env) -> None:
    """Last in this module: it changes the nested run's manifest."""
    from core.run.runs import Run

    at = open_app("overview")
    _select(at, "nested")
    assert "detected in the model" in texts(at, "caption")
    at.sidebar.text_input(key="_mo_scaling:nested").set_value("scale01")
    run_ok(at)
    at.sidebar.button(key="_mo_scaling_apply:nested").click()
    run_ok(at)
    assert Run(foreign_env / "nested").manifest.preprocessing == {"kind": "scale01"}
    assert "Pixel scaling: scale01" in texts(at, "caption")
