"""RunRecorder("s3://...") on a user's model.fit: the run lands on the server; a reader following it never
sees a partial file, and the explorer opens the result."""
from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest

from tests.cloud.conftest import BUCKET, needs

needs("fsspec", "s3fs", "moto")

N, BATCH, MINI = 192, 16, 48


def _model():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(),
                          layers.Conv2D(6, 3, activation="relu"), layers.GlobalAveragePooling2D(),
                          layers.Dense(3, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


class Follower:
    """Reads every object of the run on the server (and a mirror of it); records anything not whole."""

    def __init__(self, url: str):
        import s3fs

        from core.run.remote import Mirror

        self.url = url
        self.fs = s3fs.S3FileSystem(skip_instance_cache=True)
        self.mirror = Mirror(url)
        self.bad: list[str] = []
        self.seen_checkpoints: set[int] = set()

    def check(self) -> None:
        from core.run.remote import RemoteError
        from core.run.runs import RESUME_DIR, parse_history, parse_manifest
        from pathlib import Path

        path = self.url.removeprefix("s3://")
        self.fs.invalidate_cache()
        for key in self.fs.find(path):
            try:
                data = self.fs.cat_file(key)
            except FileNotFoundError:  # deleted since the listing: only the optimizer state of older checkpoints may go
                if f"/{RESUME_DIR}/" not in key and key.rstrip("/") != path:  # (the run's own prefix, before any object)
                    self.bad.append(f"{key}: listed, then gone")
                continue
            try:
                if key.endswith(".npz"):
                    with np.load(io.BytesIO(data), allow_pickle=False) as z:
                        _ = [z[k] for k in z.files]
                elif key.endswith("manifest.json"):
                    parse_manifest(json.loads(data), Path(key))
                elif key.endswith("history.csv"):
                    _, problems = parse_history(data.decode(), Path(key))
                    assert not problems, problems
            except Exception as e:  # noqa: BLE001 - any failure to read a listed object is the finding
                self.bad.append(f"{key}: {type(e).__name__}: {e}")
        try:
            run = self.mirror.sync()
        except RemoteError as e:
            if "incomplete run" not in str(e) and "no run here" not in str(e):  # the answers before the manifest
                self.bad.append(str(e))
            return
        for c in run.checkpoints():
            run.read_weights(c)
            self.seen_checkpoints.add(c.mini_epoch)
        run.history()
        self.bad.extend(p for p in run.problems if "missing for mini-epochs" not in p)


def test_recorder_writes_to_s3_while_a_reader_follows(s3_env):
    from core.run.remote import mirror
    from core.training.recorder import RunRecorder

    url = f"s3://{BUCKET}/live/recorded"
    rng = np.random.default_rng(0)
    x = rng.random((N, 16, 16, 3)).astype("float32")
    y = (np.arange(N) % 3).astype("int64")
    follower = Follower(url)
    during: list[int] = []

    def on_checkpoint(me: int, row) -> None:  # writer thread, after the upload; training goes on meanwhile
        follower.check()
        during.append(len(follower.seen_checkpoints))

    stop = threading.Event()

    def keep_reading() -> None:  # a second reader racing with the uploads
        while not stop.is_set():
            follower_free.check()

    follower_free = Follower(url)
    t = threading.Thread(target=keep_reading)
    t.start()
    try:
        rec = RunRecorder(url, MINI, BATCH, probes=((x[:4] * 255).astype(np.uint8), y[:4]),
                          preprocessing={"kind": "scale01"}, on_checkpoint=on_checkpoint)
        _model().fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[rec])
    finally:
        stop.set()
        t.join()
    assert not follower.bad and not follower_free.bad, follower.bad + follower_free.bad
    assert during == sorted(during) and during[0] >= 1  # it followed the run as it grew
    run = mirror(url).sync()
    assert [c.mini_epoch for c in run.checkpoints()] == list(range(9))
    assert run.history()["mini_epoch"].tolist() == list(range(1, 9))
    assert run.complete_mini_epochs() == list(range(9))


def test_recorder_refuses_to_overwrite_a_run_on_s3(s3_env):
    from core.run.runs import RunError
    from core.training.recorder import RunRecorder

    url = f"s3://{BUCKET}/live/twice"
    rng = np.random.default_rng(1)
    x = rng.random((64, 16, 16, 3)).astype("float32")
    y = (np.arange(64) % 3).astype("int64")
    m = _model()
    m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[RunRecorder(url, 32, BATCH)])
    with pytest.raises(RunError, match="already has checkpoints"):
        m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[RunRecorder(url, 32, BATCH)])
