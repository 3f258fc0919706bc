"""Sweep benchmark: per-checkpoint cost of the floor, our sweep and the naive way, measured in one run.

    python bench/bench_sweep.py [--quick] [--skip-224] [--skip-memory]
    python bench/bench_sweep.py --ray 2      (needs requirements-cloud.txt)
    python bench/bench_sweep.py --foreign [MODEL ...]   (keras.applications, weights=None, 224 px)

floor  = read the checkpoint's weight arrays + one traced forward pass of the probe batch
sweep  = core.analysis.sweep.sweep (no cache): read + forward + every statistics table written to Parquet
         (floor and sweeps are timed in turns, best of 3, so machine noise hits them alike)
         ("stats only": SweepOptions(train_mode=False, gradients=False); "full": also the training-mode
         pass and per-layer gradients)
naive  = keras.models.load_model per checkpoint + one sub-model per tapped layer + predict
Memory: peak RSS of a 200-checkpoint sweep against a 20-checkpoint sweep (separate processes).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core  # noqa: E402,F401 - the settings the app and CLI run with (OpenBLAS threads), before numpy loads
import numpy as np  # noqa: E402


def make_bench_run(root: Path, name: str, arch, n_ckpt: int, n_probe: int, seed: int = 0) -> Path:
    """A run with ``n_ckpt + 1`` checkpoints of drifting random weights (timing does not need training)."""
    from core.training.models import build_seed_net
    from core.run.runs import RunWriter, make_manifest, model_weights

    model = build_seed_net(arch, seed=seed)
    rng = np.random.default_rng(seed)
    s = arch.input_size
    probes = (rng.integers(0, 256, (n_probe, s, s, arch.input_channels), dtype=np.uint8),
              rng.integers(0, arch.num_classes, n_probe))
    w = RunWriter(root / name)
    w.create(make_manifest(name, (s, s, arch.input_channels), preprocessing={"kind": "scale01"},
                           training={"arch": arch.to_dict()}), model=model, probes=probes)
    base = model_weights(model)
    for k in range(n_ckpt + 1):
        cur = {p: (a + 0.01 * k * rng.standard_normal(a.shape).astype(a.dtype)) if "moving_variance" not in p
               else a for p, a in base.items()}
        w.write_checkpoint(k, cur)
    return root / name


def time_floor_and_sweeps(run_dir: Path, repeats: int = 3, full: bool = True) -> tuple[float, float, float]:
    """Seconds per checkpoint of (floor, sweep with statistics only, full sweep), best of ``repeats``.

    floor = weights read + one traced forward pass returning every tap of the probe batch.
    The three are measured in turns, so machine noise hits each alike; best-of is the
    usual estimate of what the code costs when nothing else interferes. Without ``full``
    the full sweep is not run (its time is NaN).
    """
    from core.engine.engine import RunEngine
    from core.run.runs import Run
    from core.analysis.sweep import SweepOptions, sweep

    run = Run(run_dir)
    eng = RunEngine(run)
    x = eng.preprocess(run.probes()[0])
    ckpts = run.checkpoints()
    stats = SweepOptions(train_mode=False, gradients=False)

    def floor() -> None:
        for c in ckpts:
            out = eng.extractor.run(eng.weight_values(eng.read_weights(c)), x)
            del out

    def sweep_with(opts: SweepOptions):
        return lambda: sweep(run, engine=eng, options=opts, use_cache=False)

    fns = [floor, sweep_with(stats)] + ([sweep_with(SweepOptions())] if full else [])
    for opts in (stats, SweepOptions()) if full else (stats,):  # trace every compiled function once
        sweep(run, engine=eng, options=opts, mini_epochs=[ckpts[0].mini_epoch], use_cache=False)
    floor()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            shutil.rmtree(run.cache_dir, ignore_errors=True)
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], (time.perf_counter() - t) / len(ckpts))
    best += [float("nan")] * (3 - len(best))
    f, s, whole = best
    return f, s, whole


def time_naive(run_dir: Path, n: int) -> float:
    """load_model per checkpoint + a sub-model per tapped layer + predict (what a hand-written script does)."""
    import keras

    from core.engine.engine import RunEngine
    from core.run.runs import Run, assign_weights

    run = Run(run_dir)
    eng = RunEngine(run)
    taps = [t for t in eng.taps if "/" not in t]
    x = eng.preprocess(run.probes()[0])
    files = []
    tmp = Path(tempfile.mkdtemp())
    for c in run.checkpoints()[:n]:  # full model files per checkpoint, as ModelCheckpoint writes them
        m = keras.models.load_model(run.architecture_path)
        assign_weights(m, run.read_weights(c))
        f = tmp / f"m{c.mini_epoch}.keras"
        m.save(f)
        files.append(f)
    t = time.perf_counter()
    for f in files:
        m = keras.models.load_model(f)
        for name in taps:
            sub = keras.Model(m.input, m.get_layer(name).output)
            sub.predict(x, verbose=0)
    dt = (time.perf_counter() - t) / len(files)
    shutil.rmtree(tmp, ignore_errors=True)
    return dt


def peak_rss_of_sweep(run_dir: Path) -> float:
    code = ("import resource,sys; sys.path.insert(0, %r)\n"
            "from core.run.runs import Run\nfrom core.analysis.sweep import sweep, SweepOptions\n"
            "sweep(Run(%r), options=SweepOptions(train_mode=False, gradients=False), use_cache=False)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)") % (str(Path(__file__).resolve().parents[1]),
                                                                           str(run_dir))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0


def bench_case(root: Path, label: str, arch, n_ckpt: int, n_probe: int, n_naive: int) -> dict:
    d = make_bench_run(root, label, arch, n_ckpt, n_probe)
    floor, stats_only, full = time_floor_and_sweeps(d)
    naive = time_naive(d, n_naive)
    r = {"case": label, "floor_ms": floor * 1e3, "sweep_ms": stats_only * 1e3, "sweep_full_ms": full * 1e3,
         "naive_ms": naive * 1e3, "sweep/floor": stats_only / floor, "sweep_full/floor": full / floor,
         "naive/sweep": naive / stats_only, "naive/sweep_full": naive / full}
    print(f"\n== {label}: {n_ckpt + 1} checkpoints, {n_probe} probe images")
    print(f"  floor (read + forward)   {floor * 1e3:8.1f} ms/ckpt")
    print(f"  sweep, statistics        {stats_only * 1e3:8.1f} ms/ckpt   {stats_only / floor:5.2f} x floor (target <= 1.3)")
    print(f"  sweep, + train mode/grad {full * 1e3:8.1f} ms/ckpt   {full / floor:5.2f} x floor")
    print(f"  naive (load_model+predict){naive * 1e3:7.1f} ms/ckpt   {naive / stats_only:5.1f} x slower than sweep "
          f"(target >= 10), {naive / full:5.1f} x the full sweep")
    return r


def bench_ray(root: Path, workers: int, quick: bool) -> dict:
    """``--ray N``: a sweep on a local Ray cluster of N CPUs against the one-process sweep, same run.

    Fixed costs (cluster start; per task: worker start, TensorFlow import, model build and trace)
    are separated from the cost per checkpoint by timing two run lengths: the difference of the
    two times, divided by the difference in checkpoints, is the marginal cost per checkpoint.
    """
    import ray

    from core.analysis.raysweep import runtime_env, sweep_on_ray
    from core.analysis.sweep import sweep
    from core.engine.engine import RunEngine, run_probe_set
    from core.run.runs import Run
    from core.training.models import ArchConfig

    arch = dataclasses.replace(ArchConfig(), input_size=224, widths=(64, 96, 128, 192, 256))
    sizes = (4, 12) if quick else (6, 24)
    runs = {n: make_bench_run(root, f"ray-{n}", arch, n - 1, 8) for n in sizes}
    floor = time_floor_and_sweeps(runs[sizes[0]], repeats=1)[0]
    # Ray lowers its workers' priority (nice 15); on a machine shared with other jobs that would
    # measure the other jobs. The one-process sweep runs at normal priority: so do the workers.
    os.environ.setdefault("RAY_worker_niceness", "0")
    t = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env=runtime_env(None))
    start = time.perf_counter() - t
    one, on_ray = {}, {}
    try:
        warm = make_bench_run(root, "ray-warm", ArchConfig(), 1, 2)
        t = time.perf_counter()
        sweep_on_ray(Run(warm), str(warm), run_probe_set(Run(warm)), workers=workers)
        cold = time.perf_counter() - t  # worker processes start and import TensorFlow once
        for n, d in runs.items():
            run = Run(d)
            probes = run_probe_set(run)
            eng = RunEngine(run)
            sweep(run, probes, engine=eng, mini_epochs=[0], use_cache=False)  # trace once, as the workers do
            shutil.rmtree(run.cache_dir, ignore_errors=True)
            t = time.perf_counter()
            sweep(run, probes, engine=eng, use_cache=False)
            one[n] = time.perf_counter() - t
            shutil.rmtree(run.cache_dir, ignore_errors=True)
            t = time.perf_counter()
            sweep_on_ray(run, str(run.path), probes, workers=workers, engine=eng)
            on_ray[n] = time.perf_counter() - t
    finally:
        ray.shutdown()
    a, b = sizes
    marg_one, marg_ray = (one[b] - one[a]) / (b - a), (on_ray[b] - on_ray[a]) / (b - a)
    fixed = on_ray[a] - marg_ray * a
    overhead = marg_ray - marg_one
    print(f"\n== Ray, {workers} workers, seed-size net at 224 px, 8 probe images, {a} and {b} checkpoints")
    print(f"  cluster start                      {start:8.1f} s (once)")
    print(f"  first sweep (workers start, import TensorFlow) {cold:6.1f} s (once per cluster)")
    for n in sizes:
        print(f"  {n:3d} checkpoints: one process {one[n]:7.1f} s, ray {on_ray[n]:7.1f} s")
    print(f"  per checkpoint (marginal): one process {marg_one * 1e3:7.0f} ms, ray {marg_ray * 1e3:7.0f} ms; "
          f"floor {floor * 1e3:.0f} ms")
    print(f"  overhead per checkpoint {overhead * 1e3:+.0f} ms = {overhead / floor * 100:+.0f} % of the floor "
          f"(target <= 20 %); fixed cost of a ray sweep {fixed:.1f} s (model build and trace in each worker)")
    return {"case": f"ray-{workers}", "cluster_start_s": start, "cold_workers_s": cold, "one_s": one, "ray_s": on_ray, "floor_ms": floor * 1e3,
            "marginal_one_ms": marg_one * 1e3, "marginal_ray_ms": marg_ray * 1e3,
            "overhead_pct_of_floor": overhead / floor * 100, "fixed_s": fixed}


def _foreign_run(root: Path, name: str, size: int, n_ckpt: int = 6, n_probe: int = 8) -> Path:
    """A run imported (core.training.importer) from ``n_ckpt`` .keras files of keras.applications.``name``."""
    import keras
    from PIL import Image

    from core.training.importer import import_checkpoints

    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    src, probes = root / f"{name}-ckpts", root / f"{name}-probes"
    src.mkdir()
    probes.mkdir()
    rng = np.random.default_rng(0)
    for e in range(1, n_ckpt + 1):
        for v in model.trainable_variables:
            v.assign(v.numpy() + 0.01 * rng.standard_normal(v.shape).astype("float32"))
        model.save(src / f"model-{e:02d}.keras")
    for i in range(n_probe):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(probes / f"{i}.png")
    return import_checkpoints(src, root / "runs", name, probes=[probes]).run


def first_checkpoint(run_dir: Path, name: str, size: int) -> dict:
    """One fresh process's first sweep checkpoint of ``run_dir`` against a plain trace of keras.applications.``name``.

    plain = build the model (weights=None) + tf.function trace + first call on the probe batch;
    first = RunEngine (load the architecture, find taps and SE blocks) + sweep of the first
    checkpoint (statistics only, no cache). Plain is timed just before and just after ours,
    so machine load hits both alike; a first plain run takes the first-use costs of TensorFlow
    and Keras, which are nobody's.
    """
    import keras
    import tensorflow as tf

    from core.analysis.sweep import SweepOptions, sweep
    from core.engine.engine import RunEngine
    from core.run.runs import Run

    def plain(x: np.ndarray) -> float:
        gc.collect()  # the garbage of the previous measurement (models hold reference cycles) is neither's cost
        t = time.perf_counter()
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
        tf.function(lambda v: model(v, training=False))(x).numpy()
        return time.perf_counter() - t

    tf.get_logger().setLevel("ERROR")  # each plain trace is a new tf.function by design: no retracing warnings
    run = Run(run_dir)
    x = np.zeros((len(run.probes()[0]), size, size, 3), "float32")
    plain(x)
    before = plain(x)
    gc.collect()
    t = time.perf_counter()
    eng = RunEngine(run)
    sweep(run, engine=eng, options=SweepOptions(train_mode=False, gradients=False),
          mini_epochs=[run.checkpoints()[0].mini_epoch], use_cache=False)
    first = time.perf_counter() - t
    after = plain(x)
    return {"plain_s": [before, after], "first_s": first, "first/plain": first / ((before + after) / 2),
            "taps": len(eng.taps), "probes": len(x)}


def bench_foreign(root: Path, names: list[str], size: int = 224, processes: int = 5) -> list[dict]:
    """``--foreign``: the first sweep checkpoint of an imported keras.applications model vs a plain trace,
    in ``processes`` fresh processes (a first checkpoint happens once per process), and later
    checkpoints against the floor as ``bench_case`` measures them."""
    from core.run.runs import Run

    out = []
    for name in names:
        run_dir = _foreign_run(root, name, size)
        firsts = []
        for _ in range(processes):
            code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_sweep; "
                    f"print(json.dumps(bench_sweep.first_checkpoint(bench_sweep.Path({str(run_dir)!r}), "
                    f"{name!r}, {size})))")
            got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            firsts.append(json.loads(got.stdout.strip().splitlines()[-1]))
        floor, stats_only, _ = time_floor_and_sweeps(run_dir, repeats=5, full=False)
        ratios = sorted(f["first/plain"] for f in firsts)
        print(f"\n== {name} {size} px, weights=None, {firsts[0]['probes']} probe images, {firsts[0]['taps']} taps, "
              f"{len(Run(run_dir).checkpoints())} checkpoints")
        for i, f in enumerate(firsts, 1):
            b, a = f["plain_s"]
            print(f"  process {i}: plain trace + first call {b:5.2f} s before, {a:5.2f} s after ours; "
                  f"first sweep checkpoint {f['first_s']:5.2f} s = {f['first/plain']:4.2f} x plain")
        print(f"  first sweep checkpoint: median {ratios[len(ratios) // 2]:4.2f} x plain, range "
              f"{ratios[0]:4.2f}-{ratios[-1]:4.2f} (target <= 2)")
        print(f"  later (best of 5): floor {floor * 1e3:7.0f} ms/ckpt, sweep {stats_only * 1e3:7.0f} ms/ckpt = "
              f"{stats_only / floor:5.2f} x floor (target <= 1.3)")
        out.append({"case": f"foreign-{name}-{size}px", "first": firsts,
                    "first/plain_median": ratios[len(ratios) // 2], "floor_ms": floor * 1e3,
                    "sweep_ms": stats_only * 1e3, "sweep/floor": stats_only / floor})
    return out


def main() -> int:
    from core.training.models import ArchConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer checkpoints")
    ap.add_argument("--skip-224", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--foreign", nargs="*", metavar="MODEL",
                    help="only: first sweep checkpoint of keras.applications models (default MobileNetV3Small "
                         "EfficientNetB0, 224 px, weights=None) vs a plain tf.function trace")
    ap.add_argument("--ray", type=int, metavar="WORKERS", help="only: a Ray sweep on WORKERS CPUs vs one process")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ade-bench-"))
    results = []
    try:
        if args.foreign is not None:
            results += bench_foreign(root, args.foreign or ["MobileNetV3Small", "EfficientNetB0"])
            args.skip_224 = args.skip_memory = args.skip_64 = True
        if args.ray:
            results.append(bench_ray(root, args.ray, args.quick))
            args.skip_224 = args.skip_memory = args.skip_64 = True
        n = 5 if args.quick else 10
        if not getattr(args, "skip_64", False):
            results.append(bench_case(root, "demo-net-64px", ArchConfig(), n, 32, 3))
        if not args.skip_224:
            seed_arch = dataclasses.replace(ArchConfig(), input_size=224, widths=(64, 96, 128, 192, 256))
            results.append(bench_case(root, "seed-size-1.5M-224px", seed_arch, 3 if args.quick else 5, 8, 2))
        if not args.skip_memory:
            small = dataclasses.replace(ArchConfig(), widths=(16, 16, 24, 24, 32))
            d20 = make_bench_run(root, "mem20", small, 20, 16)
            d200 = make_bench_run(root, "mem200", small, 200, 16)
            m20, m200 = peak_rss_of_sweep(d20), peak_rss_of_sweep(d200)
            print(f"\n== memory: peak RSS 20 ckpts {m20:.0f} MB, 200 ckpts {m200:.0f} MB: "
                  f"{(m200 / m20 - 1) * 100:+.1f} % (target <= +10 %)")
            results.append({"case": "memory", "rss20_mb": m20, "rss200_mb": m200, "ratio": m200 / m20})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
