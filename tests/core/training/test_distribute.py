"""tf.distribute: MirroredStrategy over 2 logical CPUs writes one run once; only the chief writes."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from core.training import recorder
from core.training.distribute import chief_task, is_chief, is_multi_worker
from core.training.recorder import RunRecorder

REPO = Path(__file__).resolve().parents[3]

# Logical devices must be configured before TensorFlow initialises, so this runs in its own
# interpreter. It counts every RunWriter call to prove a single writer.
SCRIPT = textwrap.dedent('''
    import collections, json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from core.run import runs
    from core.training.models import ArchConfig
    from core.training.recorder import RunRecorder
    from core.run.runs import Run
    from core.training.trainer import TrainConfig, train

    calls = collections.Counter()
    for name in ("create", "write_checkpoint", "append_history"):
        def wrap(f, name=name):
            def counted(self, *a, **k):
                key = (name, str(self.path), a[0] if name == "write_checkpoint" else
                       int(a[0]["mini_epoch"]) if name == "append_history" else None)
                calls[json.dumps(key)] += 1
                return f(self, *a, **k)
            return counted
        setattr(runs.RunWriter, name, wrap(getattr(runs.RunWriter, name)))

    class Final(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.weights = [np.array(v.numpy()) for v in self.model.weights]

    root = sys.argv[1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}

    arch = ArchConfig(input_size=32, widths=(8, 8, 8), convs=(1, 1, 1), residual_blocks=(2,),
                      se_blocks=(1, 2, 3), dense_units=(16, 16), num_classes=5, stem_width=8)
    cfg = TrainConfig(arch=arch, train_images=128, val_images=16, probe_images=4, batch_size=32,
                      mini_epoch_images=64, mini_epochs=2, seed=0)
    fin = Final()
    train(cfg, os.path.join(root, "trainer"), strategy=strategy, callbacks=[fin])
    out["trainer_final"] = fin.weights

    x = np.random.default_rng(0).random((200, 16, 16, 3)).astype("float32")
    y = np.arange(200) % 3
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], steps_per_execution=1)
    fin = Final()
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
              callbacks=[RunRecorder(os.path.join(root, "user"), 100, 32, save_optimizer=True), fin])
    out["user_final"] = fin.weights
    out["calls"] = dict(calls)
    print("RESULT " + json.dumps(out, default=lambda a: np.asarray(a).tolist()))
''')


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mirrored")
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stderr[-3000:]
    return root, json.loads(lines[-1][len("RESULT "):])


def _one_writer(calls: dict, run_dir: Path, n: int) -> None:
    mine = {tuple(json.loads(k)): v for k, v in calls.items() if json.loads(k)[1] == str(run_dir)}
    assert mine[("create", str(run_dir), None)] == 1
    assert sorted(k[2] for k in mine if k[0] == "write_checkpoint") == list(range(n + 1))
    assert sorted(k[2] for k in mine if k[0] == "append_history") == list(range(1, n + 1))
    assert set(mine.values()) == {1}  # nothing written twice
    names = sorted(p.name for p in run_dir.rglob("*"))
    assert len(names) == len(set(names)) and not [n for n in names if n.startswith(".")]


def test_mirrored_trainer_writes_once_and_matches_final_weights(mirrored):
    root, out = mirrored
    assert out["replicas"] == 2
    from core.run.runs import Run

    run = Run(root / "trainer")
    _one_writer(out["calls"], run.path, 2)
    assert run.history()["images_seen"].tolist() == [64, 128]
    model = run.load_model()
    run.load_weights_into(model, 2)
    for v, want in zip(model.weights, out["trainer_final"]):
        np.testing.assert_array_equal(v.numpy(), np.asarray(want, np.float32))


def test_mirrored_user_fit_records_global_images(mirrored):
    root, out = mirrored
    from core.run.runs import Run

    run = Run(root / "user")
    # 200 images per epoch (a short last batch split over both replicas), a checkpoint every 100.
    _one_writer(out["calls"], run.path, 4)
    hist = run.history()
    assert hist["images_seen"].tolist() == [128, 200, 328, 400]  # first callback at or after each 100
    assert np.isfinite(hist["loss"]).all()
    model = run.load_model()
    run.load_weights_into(model, 4)
    for v, want in zip(model.weights, out["user_final"]):
        np.testing.assert_array_equal(v.numpy(), np.asarray(want, np.float32))


# -- who writes ---------------------------------------------------------------------------
CLUSTER = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}


@pytest.mark.parametrize("task,cluster,want", [
    ((None, None), {}, True),
    (("chief", 0), CLUSTER, True),
    (("worker", 0), CLUSTER, False),
    (("worker", 1), CLUSTER, False),
    (("worker", 0), {"worker": ["h1:1", "h2:1"]}, True),
    (("worker", 1), {"worker": ["h1:1", "h2:1"]}, False),
    (("evaluator", 0), {**CLUSTER, "evaluator": ["h3:1"]}, False),
])
def test_chief_task(task, cluster, want):
    assert chief_task(*task, cluster) is want


def _tf_config_strategy(monkeypatch, task_type: str, index: int):
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": task_type, "index": index}}))
    # Only the resolver matters: a fake MultiWorker strategy without starting any server.
    return types.SimpleNamespace(cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())


def test_is_chief_reads_tf_config(monkeypatch):
    assert is_chief(_tf_config_strategy(monkeypatch, "worker", 0)) is True
    s = _tf_config_strategy(monkeypatch, "worker", 1)
    assert is_chief(s) is False and is_multi_worker(s) is True
    assert is_chief(None) is True and is_multi_worker(None) is False


def test_a_non_chief_recorder_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "is_chief", lambda strategy=None: False)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rec = RunRecorder(tmp_path / "r", 16, 8)
    model.fit(np.zeros((64, 8, 8, 1), "float32"), np.zeros(64, "int64"), batch_size=8, verbose=0, callbacks=[rec])
    assert rec.mini_epoch == 4 and rec.images_seen == 64
    assert not (tmp_path / "r").exists()
