"""A user's own model with custom objects: recorded in one process, analysed by ``python -m core`` in another."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.run.custom_objects import (CustomObjectsError, load_custom_objects, missing_object, strip_training_only,
                                     zero_initializers)

ROOT = Path(__file__).resolve().parents[3]

# The original question's SE block: an unregistered initializer class and an activity-regularizer
# function on the gate, defined in the training script only (its __main__).
TRAIN_SCRIPT = textwrap.dedent('''
    import sys
    import keras
    import numpy as np
    from core.training.recorder import RunRecorder

    class My1PlusInitializer(keras.initializers.Initializer):
        def __init__(self, scale=0.01):
            self.scale = scale
        def __call__(self, shape, dtype=None):
            return 1.0 + self.scale * keras.random.normal(shape, dtype=dtype)
        def get_config(self):
            return {"scale": self.scale}

    def near1Regularizer(x):
        return 0.01 * keras.ops.mean((1 - x) ** 2)

    keras.utils.set_random_seed(0)
    i = keras.Input((12, 12, 3))
    c = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(i)
    s = keras.layers.GlobalAveragePooling2D(name="se_squeeze")(c)
    h = keras.layers.Dense(4, activation="relu", name="se_reduce")(s)
    g = keras.layers.Dense(8, activation="sigmoid", activity_regularizer=near1Regularizer,
                           kernel_initializer=My1PlusInitializer(0.02), name="se_gate")(h)
    e = keras.layers.Multiply(name="se_excite")([c, keras.layers.Reshape((1, 1, 8))(g)])
    o = keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.Flatten()(e))
    model = keras.Model(i, o)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 12, 12, 3)).astype("uint8")
    y = rng.integers(0, 3, 64)
    rec = RunRecorder(sys.argv[1], mini_epoch_images=32, batch_size=16, probes=(x[:4], y[:4]),
                      preprocessing={"kind": "scale01"})
    model.fit(x / 255.0, y, batch_size=16, epochs=1, callbacks=[rec], verbose=0)
''')

CUSTOM_LAYER = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="user")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x
''')


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _core(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("custom")
    script = d / "train_user.py"
    script.write_text(TRAIN_SCRIPT)
    run = d / "runs" / "user"
    done = subprocess.run([sys.executable, str(script), str(run)], cwd=d, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_recorder_names_the_custom_objects_in_the_manifest(recorded: Path) -> None:
    manifest = json.loads((recorded / "manifest.json").read_text())
    objects = {o["name"]: o for o in manifest["custom_objects"]}
    assert set(objects) == {"My1PlusInitializer", "near1Regularizer"}
    # defined in the training script's __main__: no module another process could import
    assert objects["My1PlusInitializer"] == {"name": "My1PlusInitializer", "kind": "class", "module": None}
    assert objects["near1Regularizer"]["kind"] == "function"


def test_sweep_in_another_process_without_the_code(recorded: Path) -> None:
    # cwd is not the script's folder: that process cannot import the user's code
    done = _core("sweep", str(recorded), "--fast", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "1 SE blocks" in done.stdout
    note = [line for line in done.stderr.splitlines() if line.startswith("note: left out")]
    assert len(note) == 1 and "se_gate.kernel_initializer = My1PlusInitializer" in note[0]
    assert "se_gate.activity_regularizer = near1Regularizer" in note[0]


def test_strip_keeps_what_keras_can_rebuild() -> None:
    config = {"class_name": "Dense", "config": {
        "name": "d", "kernel_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                                            "registered_name": None},
        "bias_regularizer": {"module": None, "class_name": "Mine", "config": {}, "registered_name": "Mine"},
        "kernel_constraint": None}}
    out, dropped = strip_training_only(config)
    assert dropped == ("d.bias_regularizer = Mine",)
    assert "bias_regularizer" not in out["config"] and out["config"]["kernel_initializer"]["class_name"] == "Zeros"
    assert "bias_regularizer" in config["config"]  # the input is not modified


def test_zero_initializers_replaces_every_initializer_and_nothing_else() -> None:
    he = {"module": "keras.initializers", "class_name": "HeNormal", "config": {"seed": None}, "registered_name": None}
    l2 = {"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.01}, "registered_name": None}
    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Conv2D", "config": {"name": "c", "kernel_initializer": he, "bias_initializer": "zeros",
                                            "kernel_regularizer": l2, "depthwise_initializer": None}},
        {"class_name": "BatchNormalization", "config": {"name": "bn", "moving_variance_initializer": "ones"}}]}}
    out = zero_initializers(config)
    conv, bn = (layer["config"] for layer in out["config"]["layers"])
    assert conv["kernel_initializer"]["class_name"] == conv["bias_initializer"]["class_name"] == "Zeros"
    assert bn["moving_variance_initializer"]["class_name"] == "Zeros"
    assert conv["kernel_regularizer"] == l2 and conv["depthwise_initializer"] is None
    assert config["config"]["layers"][0]["config"]["kernel_initializer"] is he  # the input is not modified


def test_missing_custom_layer_is_named_then_loaded_with_custom_objects_and_trust(tmp_path: Path) -> None:
    import keras
    import numpy as np

    from core.run.loading import ModelLoadError, load_model_file

    code = tmp_path / "user_layers.py"
    code.write_text(CUSTOM_LAYER)
    objects = load_custom_objects(code, trust=True)
    layer_cls = objects.objects["Doubler"]
    model = keras.Sequential([keras.Input((4, 4, 1)), layer_cls(name="double"), keras.layers.Flatten()])
    path = tmp_path / "model.keras"
    model.save(path)
    keras.saving.get_custom_objects().pop("user>Doubler", None)  # as in a process that never saw the code
    with pytest.raises(ModelLoadError, match=r"needs 'Doubler'.*--custom-objects FILE.py\|module") as e:
        load_model_file(path)
    assert "--trust-code" in str(e.value)
    other = tmp_path / "other.py"
    other.write_text("def unrelated(x):\n    return x\n")
    with pytest.raises(ModelLoadError, match="other.py does not define it"):
        load_model_file(path, custom_objects=load_custom_objects(other, trust=True))
    loaded = load_model_file(path, custom_objects=load_custom_objects(code, trust=True))
    x = np.ones((1, 4, 4, 1), "float32")
    np.testing.assert_array_equal(loaded(x).numpy(), 2 * np.ones((1, 16)))


def test_custom_objects_bad_input_is_explained(tmp_path: Path) -> None:
    raising = tmp_path / "raises.py"
    raising.write_text("raise RuntimeError('boom')\n")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(CustomObjectsError, match="--trust-code"):
        load_custom_objects(raising, trust=False)
    with pytest.raises(CustomObjectsError, match="raised RuntimeError: boom"):
        load_custom_objects(raising, trust=True)
    with pytest.raises(CustomObjectsError, match="defines no class or function"):
        load_custom_objects(empty, trust=True)
    with pytest.raises(CustomObjectsError, match="cannot import"):
        load_custom_objects("no_such_module_here", trust=True)
    assert missing_object("Could not locate class 'user>Doubler'. Make sure") == "user>Doubler"


def test_cli_custom_objects_errors_change_nothing(recorded: Path, tmp_path: Path) -> None:
    raising = tmp_path / "raises.py"
    raising.write_text("raise RuntimeError('boom')\n")
    before = sorted(p.name for p in recorded.rglob("*"))
    untrusted = _core("sweep", str(recorded), "--custom-objects", str(raising), cwd=ROOT)
    assert untrusted.returncode != 0 and "--trust-code" in untrusted.stderr and "Traceback" not in untrusted.stderr
    trusted = _core("diagnose", str(recorded), "--custom-objects", str(raising), "--trust-code", cwd=ROOT)
    assert trusted.returncode != 0 and "boom" in trusted.stderr and "Traceback" not in trusted.stderr
    assert sorted(p.name for p in recorded.rglob("*")) == before


def test_legacy_h5_with_an_unknown_initializer_loads_without_it(tmp_path: Path) -> None:
    import keras
    import numpy as np

    from core.run.loading import load_model_noted

    class Ones2(keras.initializers.Initializer):  # defined here only: unknown to the loader
        def __call__(self, shape, dtype=None):
            return keras.ops.ones(shape, dtype=dtype) * 2.0

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer=Ones2(), name="d")])
    path = tmp_path / "legacy.h5"
    model.save(path)
    loaded = load_model_noted(path)
    assert loaded.dropped == ("d.kernel_initializer = Ones2",)
    np.testing.assert_array_equal(loaded.model.get_layer("d").kernel.numpy(), np.full((3, 2), 2.0))
