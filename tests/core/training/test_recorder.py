"""RunRecorder on a user's own model.fit: exact image counts, per-mini-epoch means, resume, refusal."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import layers

from core.training.recorder import RunRecorder
from core.training.segments import Segment
from core.run.runs import Run, RunError

N, BATCH, MINI = 200, 16, 50  # 12 full batches + one of 8 per epoch; 50 is no multiple of 16


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((N, 16, 16, 3)).astype("float32")
    return x, (np.arange(N) % 3).astype("int64")


def _user_model(optimizer) -> keras.Model:
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(),
                          layers.Conv2D(6, 3, activation="relu"), layers.GlobalAveragePooling2D(),
                          layers.Dense(3, activation="softmax")])
    m.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              steps_per_execution=2)
    return m


def _probes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (x[:4] * 255).astype(np.uint8), np.arange(4, dtype=np.int64) % 3


def test_user_fit_writes_a_run_with_exact_counts_and_means(tmp_path):
    x, y = _data()
    model = _user_model(keras.optimizers.SGD(0.0))  # frozen weights: every batch loss is computable by hand
    rec = RunRecorder(tmp_path / "mine", MINI, BATCH, probes=_probes(x), preprocessing={"kind": "scale01"},
                      class_names=["a", "b", "c"], training_config={"note": "user fit"})
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[rec])

    run = Run(tmp_path / "mine")
    hist = run.history()
    # Callbacks come every 2 batches (32 images) and after the short last batch (200, 400). A
    # checkpoint lands on the first callback at or after each multiple of 50: 64 (50), 128 (100),
    # 160 (150), 200 (200), 264 (250), 328 (300), 360 (350), 400 (400).
    assert hist["images_seen"].astype(int).tolist() == [64, 128, 160, 200, 264, 328, 360, 400]
    assert [c.mini_epoch for c in run.checkpoints()] == list(range(9))

    p = np.asarray(model(x, training=False), np.float64)
    per_image_loss = -np.log(p[np.arange(N), y])
    per_image_hit = (p.argmax(1) == y).astype(np.float64)
    stream_loss, stream_hit = np.tile(per_image_loss, 2), np.tile(per_image_hit, 2)  # no shuffle: x, then x
    bounds = [0, *hist["images_seen"].astype(int)]
    want_loss = [stream_loss[a:b].mean() for a, b in zip(bounds, bounds[1:])]
    want_acc = [stream_hit[a:b].mean() for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_allclose(hist["loss"], want_loss, rtol=2e-5)
    np.testing.assert_allclose(hist["accuracy"], want_acc, atol=1e-6)
    assert hist["lr"].tolist() == [0.0] * 8 and hist["val_loss"].isna().all()

    m = run.manifest
    assert m.input_shape == (16, 16, 3) and m.preprocessing == {"kind": "scale01"} and m.mini_epoch_images == MINI
    assert m.class_names == ("a", "b", "c") and m.training == {"note": "user fit"}
    assert run.probes()[0].shape == (4, 16, 16, 3)
    arch = run.load_model()
    for c in run.checkpoints():
        run.load_weights_into(arch, c.mini_epoch)


def test_checkpoints_follow_training_and_resume_continues(tmp_path):
    x, y = _data()
    xv, yv = x[:20], y[:20]
    model = _user_model(keras.optimizers.Adam(1e-2))
    rec = RunRecorder(tmp_path / "r", MINI, BATCH, validation_data=(xv, yv))
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[rec])
    run = Run(tmp_path / "r")
    # Checkpoints are keyed like the saved architecture (this Sequential's own paths carry a
    # "sequential_N/" prefix the reloaded one lacks); the last boundary (400) is the end of training.
    arch = run.load_model()
    run.load_weights_into(arch, 8)
    for mine, saved in zip(model.weights, arch.weights):
        np.testing.assert_array_equal(saved.numpy(), mine.numpy())
    run.load_weights_into(arch, 0)
    assert not np.allclose(arch.weights[0].numpy(), model.weights[0].numpy())
    hist = run.history()
    assert np.isfinite(hist["val_loss"]).all() and hist["val_accuracy"].between(0, 1).all()
    np.testing.assert_allclose(hist["lr"], 1e-2, rtol=1e-6)

    # Running the same cell again must not overwrite the run ...
    with pytest.raises(RunError, match="already has checkpoints"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[RunRecorder(tmp_path / "r", MINI, BATCH)])
    # ... and resume=True continues after the last complete checkpoint.
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[RunRecorder(tmp_path / "r", MINI, BATCH, resume=True)])
    hist = Run(tmp_path / "r").history()
    assert hist["mini_epoch"].tolist() == list(range(1, 13))
    assert (np.diff(hist["images_seen"]) > 0).all() and hist["images_seen"].iloc[-1] == 600
    assert (np.diff(hist["wall_time"]) > 0).all()


def test_segment_means_are_per_image_and_span_epochs():
    seg = Segment()
    # Epoch 1: batches of 4, 4, 2 images with losses 1, 2, 4 -> running means as Keras reports them.
    seg.new_epoch()
    seg.update(4, {"loss": 1.0})
    seg.update(8, {"loss": 1.5})
    assert seg.mean("loss") == 1.5 and seg.images == 8
    seg.reset_segment()
    seg.update(10, {"loss": (4 + 8 + 8) / 10})
    seg.new_epoch()
    seg.update(4, {"loss": 3.0, "accuracy": 0.5})
    # The segment holds the batch of 2 (loss 4) and the next epoch's batch of 4 (loss 3).
    assert seg.images == 6 and seg.mean("loss") == pytest.approx((2 * 4 + 4 * 3) / 6)
    assert seg.mean_acc() == pytest.approx(4 * 0.5 / 6)  # accuracy only logged in the second part
    seg.reset_segment()
    seg.update(8, {"loss": math.nan})
    assert math.isnan(seg.mean("loss"))
    seg.reset_segment()
    seg.new_epoch()
    seg.update(4, {"loss": 2.0})
    assert seg.mean("loss") == 2.0  # a NaN mini-epoch does not poison the next ones
