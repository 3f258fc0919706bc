"""Loading model and weights files: Lambda refusal and opt-in trust, clear errors, architecture checks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras import layers

from core.run.loading import (
    ModelLoadError, UnsafeModelError, file_kind, load_model_file, read_weights_file, unsafe_parts,
)
from core.training.models import ArchConfig, build_seed_net

TESTDATA = Path(__file__).resolve().parents[3].parent / "shared" / "testdata"
LEGACY = TESTDATA / "legacy-keras2" / "keras_mnist_model.h5"
needs_legacy = pytest.mark.skipif(not LEGACY.exists(),
                                  reason=f"shared test data not found at {LEGACY} (project cloned alone)")


def small_net(seed: int = 0, **kw) -> keras.Model:
    return build_seed_net(ArchConfig(input_size=16, widths=(8, 8), convs=(1, 1), residual_blocks=(2,),
                                     se_blocks=(1, 2), dense_units=(8,), num_classes=3, **kw), seed=seed)


def lambda_net() -> keras.Model:
    inp = keras.Input((4,), name="x")
    y = layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    return keras.Model(inp, layers.Dense(2, name="out")(y))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    net = small_net(seed=1)
    paths = {"keras": d / "net.keras", "weights": d / "net.weights.h5", "h5": d / "net.h5",
             "lambda": d / "lambda.keras"}
    net.save(paths["keras"])
    net.save_weights(paths["weights"])
    net.save(paths["h5"])  # legacy HDF5 full model, as Keras 2 wrote them
    lambda_net().save(paths["lambda"])
    return paths


def expected_weights(path: Path) -> dict[str, np.ndarray]:
    model = keras.saving.load_model(path, compile=False)
    return {v.path: v.numpy() for v in model.weights}


# ---- load_model_file ----------------------------------------------------------------------------


def test_keras_file_loads_in_safe_mode(files: dict[str, Path]) -> None:
    model = load_model_file(files["keras"])
    assert file_kind(files["keras"]) == "keras-model"
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), small_net(seed=1).predict(x, verbose=0), rtol=1e-5)


def test_legacy_h5_full_model_loads(files: dict[str, Path]) -> None:
    assert file_kind(files["h5"]) == "h5-model"
    assert isinstance(load_model_file(files["h5"]), keras.Model)


def test_lambda_keras_file_refused_then_trusted(files: dict[str, Path]) -> None:
    with pytest.raises(UnsafeModelError) as err:
        load_model_file(files["lambda"])
    msg = str(err.value)
    assert "Lambda" in msg and "double" in msg and "--trust-code" in msg and "I trust this file" in msg
    assert str(files["lambda"]) in msg
    model = load_model_file(files["lambda"], trust=True)
    x = np.ones((1, 4), np.float32)
    out = model.get_layer("out")
    np.testing.assert_allclose(model.predict(x, verbose=0), 2 * x @ out.kernel.numpy() + out.bias.numpy(),
                               rtol=1e-6)


def test_unsafe_error_is_a_model_load_error() -> None:
    assert issubclass(UnsafeModelError, ModelLoadError) and issubclass(ModelLoadError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model_file(tmp_path / "absent.keras")


@pytest.mark.parametrize("name", ["keras", "h5", "weights"])
def test_truncated_files_name_the_file(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    src = files[name]
    cut = tmp_path / src.name
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as err:
        load_model_file(cut)
    assert str(cut) in str(err.value)
    with pytest.raises(ModelLoadError):
        read_weights_file(cut, small_net())


def test_garbage_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.keras"
    bad.write_text("not a zip")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model_file(bad)


def test_savedmodel_folder_explains_tfsmlayer(tmp_path: Path) -> None:
    inp = keras.Input((4,))
    keras.Model(inp, layers.Dense(2)(inp)).export(tmp_path / "sm", verbose=False)
    with pytest.raises(ModelLoadError) as err:
        load_model_file(tmp_path / "sm")
    msg = str(err.value)
    assert "TFSMLayer" in msg and "intermediate" in msg and ".keras" in msg


def test_weights_only_files_need_an_architecture(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="architecture"):
        load_model_file(files["weights"])
    legacy_weights = tmp_path / "legacy_weights.h5"
    _legacy_weights_only(files["h5"], legacy_weights)
    assert file_kind(legacy_weights) == "h5-weights"
    with pytest.raises(ModelLoadError, match="architecture"):
        load_model_file(legacy_weights)


def _legacy_weights_only(full_h5: Path, out: Path) -> None:
    """Keras 2 ``save_weights('x.h5')`` layout: the model_weights group at the root, no model_config."""
    with h5py.File(full_h5, "r") as src, h5py.File(out, "w") as dst:
        g = src["model_weights"]
        for k, v in g.attrs.items():
            dst.attrs[k] = v
        for k in g:
            g.copy(g[k], dst, name=k)


# ---- read_weights_file --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["keras", "weights", "h5"])
def test_read_weights_from_every_format(files: dict[str, Path], name: str) -> None:
    arch = small_net(seed=7)  # same architecture, other values
    got = read_weights_file(files[name], arch)
    ref = expected_weights(files["keras"])
    assert set(got) == {v.path for v in arch.weights}
    for k, a in ref.items():
        np.testing.assert_array_equal(got[k], a, err_msg=k)
    # the architecture itself is untouched: loading went into a private clone
    assert not np.array_equal(arch.get_layer("block1_conv1").kernel.numpy(), got["block1_conv1/kernel"])


def test_read_legacy_weights_only(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "w.h5"
    _legacy_weights_only(files["h5"], out)
    got = read_weights_file(out, small_net(seed=3))
    ref = expected_weights(files["keras"])
    np.testing.assert_array_equal(got["block2_se_expand/bias"], ref["block2_se_expand/bias"])


def test_other_architecture_is_rejected_with_names(files: dict[str, Path]) -> None:
    other = build_seed_net(ArchConfig(input_size=16, widths=(8, 12), convs=(1, 1), residual_blocks=(2,),
                                      se_blocks=(1, 2), dense_units=(8,), num_classes=3))
    for name in ("h5", "keras", "weights"):
        with pytest.raises(ModelLoadError, match="another architecture"):
            read_weights_file(files[name], other)
    with pytest.raises(ModelLoadError) as err:
        read_weights_file(files["h5"], other)
    assert "block2_conv1" in str(err.value)


def test_same_shapes_other_names_is_rejected_for_h5(files: dict[str, Path]) -> None:
    """Keras alone would load this silently (position and class match); the name check refuses it."""
    renamed = keras.models.clone_model(
        small_net(), clone_function=lambda layer: layer.__class__.from_config(
            {**layer.get_config(), "name": "x_" + layer.name}))
    with pytest.raises(ModelLoadError, match="another architecture"):
        read_weights_file(files["h5"], renamed)


def test_lambda_model_weights_read_without_running_code(files: dict[str, Path]) -> None:
    got = read_weights_file(files["lambda"], load_model_file(files["lambda"], trust=True))
    assert set(got) == {"out/kernel", "out/bias"}


# ---- the real Keras 2 file ----------------------------------------------------------------------


@needs_legacy
def test_real_keras2_lambda_file_is_refused_without_trust() -> None:
    assert file_kind(LEGACY) == "h5-model"
    with pytest.raises(UnsafeModelError) as err:
        load_model_file(LEGACY)
    msg = str(err.value)
    assert "Lambda" in msg and "lambda_1" in msg and "lambda_13" in msg and str(LEGACY) in msg
    with h5py.File(LEGACY, "r") as f:
        assert len(unsafe_parts(json.loads(f.attrs["model_config"]))) == 13


@needs_legacy
def test_real_keras2_lambda_file_with_trust() -> None:
    """Its Lambda bytecode comes from an older Python; then the error must say so clearly."""
    try:
        model = load_model_file(LEGACY, trust=True)
    except UnsafeModelError:
        pytest.fail("trust=True must not raise UnsafeModelError")
    except ModelLoadError as e:
        msg = str(e)
        assert str(LEGACY) in msg and "Lambda" in msg and "read_weights_file" in msg
    else:
        assert model.input_shape == (None, 28, 28, 1)


@needs_legacy
def test_real_keras2_weights_into_lambda_free_architecture(tmp_path: Path) -> None:
    """Rebuild the architecture with the Lambdas (weightless) replaced by identities, then read the weights."""
    stripped = tmp_path / "stripped.h5"
    shutil.copy(LEGACY, stripped)
    stripped.chmod(0o644)
    with h5py.File(stripped, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["class_name"] = "Activation"
                layer["config"] = {"name": layer["config"]["name"], "activation": "linear"}
        f.attrs["model_config"] = json.dumps(cfg)
    arch = load_model_file(stripped)  # no Lambda left: safe mode is enough
    got = read_weights_file(LEGACY, arch)
    with h5py.File(LEGACY, "r") as f:
        np.testing.assert_array_equal(got["conv2d_1/kernel"], f["model_weights/conv2d_1/conv2d_1/kernel:0"][()])
        np.testing.assert_array_equal(got["dense_2/bias"], f["model_weights/dense_2/dense_2/bias:0"][()])
    with pytest.raises(ModelLoadError, match="another architecture"):
        read_weights_file(LEGACY, small_net())
