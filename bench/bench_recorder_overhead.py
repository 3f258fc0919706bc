"""Recorder overhead: the same short training of the demo network without and with RunRecorder.

Run: ``.venv/bin/python bench/bench_recorder_overhead.py [--rounds 2]``. Each round trains a fresh demo
network (default ArchConfig, 64 px, synthetic data) for the same mini-epochs three ways, in
alternating order: no callback; RunRecorder (checkpoints, optimizer state, history); RunRecorder
plus validation on 500 images (what the built-in trainer does). It prints wall-time ratios
against the bare run, and the time spent inside the recorder's own hooks, which is less noisy
on a shared machine. Target: <= 3 % overhead.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("bare", "recorder", "recorder+val")


def _timed_recorder_class():
    from core.training.recorder import RunRecorder

    class TimedRecorder(RunRecorder):
        """Accumulates the seconds spent in the recorder's hooks."""

        spent = 0.0
        begin = 0.0
        per_checkpoint: list[float] = []

        def on_train_begin(self, logs=None):
            t = time.perf_counter()
            super().on_train_begin(logs)
            self.begin = time.perf_counter() - t
            self.spent += self.begin

        def on_train_batch_end(self, batch, logs=None):
            t = time.perf_counter()
            n = self.mini_epoch
            super().on_train_batch_end(batch, logs)
            dt = time.perf_counter() - t
            self.spent += dt
            if self.mini_epoch != n:
                self.per_checkpoint.append(dt)

    return TimedRecorder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mini-epochs", type=int, default=4)
    p.add_argument("--mini-epoch-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)

    import keras

    from core.training import data as data_mod
    from core.training.models import ArchConfig, build_seed_net
    from core.run.preprocess import PreprocessSpec, apply_preprocessing
    from core.training.trainer import TrainConfig, load_data

    cfg = TrainConfig(arch=ArchConfig(), train_images=args.mini_epochs * args.mini_epoch_images, val_images=500,
                      probe_images=32, batch_size=args.batch_size, mini_epoch_images=args.mini_epoch_images,
                      mini_epochs=args.mini_epochs)
    t = time.perf_counter()
    data = load_data(cfg)
    print(f"data: {len(data.y_train)} images generated in {time.perf_counter() - t:.1f} s", flush=True)
    spec = {"kind": cfg.preprocessing}
    ds = data_mod.make_dataset(data.x_train, data.y_train, batch_size=cfg.batch_size, image_size=cfg.arch.input_size,
                               preprocessing=spec, shuffle=True, seed=0, repeat=True)
    val = (apply_preprocessing(data.x_val, PreprocessSpec.from_dict(spec)), data.y_val)
    steps = cfg.steps_per_mini_epoch
    Timed = _timed_recorder_class()

    def one(kind: str, tmp: Path) -> tuple[float, float, float, list[float]]:
        model = build_seed_net(cfg.arch, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace the train step outside the timing
        cbs = []
        if kind != "bare":
            rec = Timed(tmp / f"{kind}-{time.monotonic_ns()}", steps * cfg.batch_size, cfg.batch_size,
                        probes=(data.x_probe, data.y_probe), preprocessing=spec,
                        validation_data=val if kind == "recorder+val" else None,
                        training_config=cfg.to_dict(), save_optimizer=True)
            rec.spent, rec.per_checkpoint = 0.0, []
            cbs = [rec]
        t0 = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=cfg.mini_epochs, callbacks=cbs, verbose=0, shuffle=False)
        wall = time.perf_counter() - t0
        if not cbs:
            return wall, 0.0, 0.0, []
        return wall, cbs[0].spent, cbs[0].begin, cbs[0].per_checkpoint

    walls: dict[str, list[float]] = {k: [] for k in KINDS}
    hooks: dict[str, list[float]] = {k: [] for k in KINDS}
    per_ckpt: dict[str, list[float]] = {k: [] for k in KINDS}
    begins: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            order = KINDS if r % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                wall, spent, begin, pc = one(kind, Path(d))
                walls[kind].append(wall)
                hooks[kind].append(spent)
                begins[kind].append(begin)
                per_ckpt[kind].extend(pc)
                print(f"round {r + 1} {kind:>13}: {wall:6.2f} s, {cfg.mini_epochs * steps * cfg.batch_size / wall:5.0f} "
                      f"img/s, in recorder hooks {spent:5.2f} s", flush=True)

    bare = statistics.median(walls["bare"])
    print(f"\n{cfg.mini_epochs} mini-epochs x {steps * cfg.batch_size} images, demo network "
          f"({cfg.arch.input_size} px), median of {args.rounds} round(s)")
    print("hooks = time inside the recorder: start (manifest, architecture, checkpoint 0), every batch "
          "(image count), every checkpoint (weights, optimizer state, history, validation)")
    print(f"{'':>13}  {'wall s':>7}  {'ratio':>6}  {'hooks s':>7}  {'hooks/bare':>10}  {'start s':>7}  "
          f"{'per ckpt ms':>11}  {'per batch us':>12}")
    n_batches = cfg.mini_epochs * steps
    for kind in KINDS:
        w = statistics.median(walls[kind])
        h = statistics.median(hooks[kind])
        b = statistics.median(begins[kind])
        pc = statistics.median(per_ckpt[kind]) if per_ckpt[kind] else 0.0
        pb = (h - b - pc * cfg.mini_epochs) / n_batches if kind != "bare" else 0.0
        print(f"{kind:>13}  {w:7.2f}  {w / bare:6.3f}  {h:7.2f}  {h / bare:10.1%}  {b:7.2f}  {1000 * pc:11.0f}  "
              f"{1e6 * pb:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
