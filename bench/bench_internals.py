"""Small measurements behind choices made in the code (the code's comments say why, this says how much).

    python bench/bench_internals.py [--quick]

Each line: what is compared, the two timings (best of several repeats) and their ratio. Results are
written to bench/results/internals.json too. Numbers depend on the machine and on its load: quote them
with the conditions (cores, busy or idle), as bench/README.md does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS: list[dict] = []


def best(fn: Callable[[], object], repeat: int, number: int = 1) -> float:
    """Best wall time of ``number`` calls of ``fn``, over ``repeat`` tries, per call (seconds)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def report(what: str, a_name: str, a: float, b_name: str, b: float) -> None:
    RESULTS.append({"what": what, a_name: a, b_name: b, "ratio": b / a if a else float("nan")})
    print(f"{what}\n    {a_name}: {_t(a)}   {b_name}: {_t(b)}   ratio {b / a:.1f}", flush=True)


def _t(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")


# ---- numpy / OpenBLAS ---------------------------------------------------------------------------------

_DOT = """
import os, sys, time
sys.path.insert(0, {root!r})
import tensorflow  # noqa: F401  (its thread pools are what OpenBLAS's threads compete with)
import numpy as np
a = np.random.default_rng(0).random({n})
ones = np.ones({n})
ts = []
for _ in range(50):
    t0 = time.perf_counter(); a @ ones; ts.append(time.perf_counter() - t0)
print(min(ts), sorted(ts)[len(ts) // 2])
"""


def openblas_threads(quick: bool) -> None:
    """core/__init__.py sets OPENBLAS_NUM_THREADS=1: a float64 dot product with and without that setting."""
    n = 50_000
    out = {}
    for label, threads in (("1 thread", "1"), ("OpenBLAS default", None)):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if threads:
            env["OPENBLAS_NUM_THREADS"] = threads
        r = subprocess.run([sys.executable, "-c", _DOT.format(root=str(ROOT), n=n)], env=env, capture_output=True,
                           text=True, timeout=600, check=True)
        out[label] = float(r.stdout.split()[1])  # the median: thread wake-ups are what varies
    report(f"dot product of {n} float64 with TensorFlow loaded (median of 50)", "1 thread", out["1 thread"],
           "OpenBLAS default", out["OpenBLAS default"])


def chunk_sizes(quick: bool) -> None:
    """core/analysis/stats.py: row sums of a (rows, k) block as a ones-vector product, per block size."""
    k = 64
    for exp in (18, 19):
        rows = (1 << exp) // k
        a = np.random.default_rng(0).random((rows, k))
        ones = np.ones(k)
        t = best(lambda: a @ ones, 5 if quick else 20)
        RESULTS.append({"what": f"ones-vector gemv, block of 2^{exp} elements", "seconds": t,
                        "per_element_ns": t / (1 << exp) * 1e9})
        print(f"ones-vector gemv, block of 2^{exp} float64: {_t(t)} ({t / (1 << exp) * 1e9:.2f} ns per element)")


# ---- drawing ------------------------------------------------------------------------------------------


def colormap_gather(quick: bool) -> None:
    """core/render/grids.py apply_colormap: one 4-byte word per pixel against (256, 3) rows."""
    from core.render.grids import apply_colormap, colormap

    lut = colormap("viridis")
    x = np.random.default_rng(0).random((64, 112, 112))
    idx = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rows = best(lambda: lut[idx], 5 if quick else 20)
    words = best(lambda: apply_colormap(x, lut), 5 if quick else 20)
    report("colormap of 64 tiles of 112x112", "word gather (apply_colormap)", words, "row gather lut[idx]", rows)


def tile_label_format(quick: bool) -> None:
    """core/render/grids.py fmt: a Python float against a numpy scalar."""
    v = np.float32(0.01234)
    n = 20_000
    numpy_scalar = best(lambda: [f"{v:.3g}" for _ in range(n)], 5) / n
    py = float(v)
    python_float = best(lambda: [f"{py:.3g}" for _ in range(n)], 5) / n
    report("formatting a tile label", "Python float", python_float, "numpy float32", numpy_scalar)


def png_writer(quick: bool) -> None:
    """core/render/grids.py to_png against Pillow at the same zlib level, on a drawn grid."""
    import io

    from PIL import Image

    from core.render.grids import apply_colormap, colormap, to_png

    x = np.random.default_rng(0).random((8, 112, 112)).repeat(2, axis=1).repeat(2, axis=2)
    tiles = apply_colormap(x, colormap("viridis"))
    px = np.ascontiguousarray(np.concatenate(list(tiles), axis=1))

    def pillow() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    ours = best(lambda: to_png(px, 1), 5 if quick else 15)
    theirs = best(pillow, 5 if quick else 15)
    report(f"PNG of a {px.shape[1]}x{px.shape[0]} grid, zlib level 1 "
           f"(sizes {len(to_png(px, 1)) // 1024} KiB vs {len(pillow()) // 1024} KiB)",
           "to_png", ours, "Pillow", theirs)


def html_handling(quick: bool) -> None:
    """ui/widgets.py _AsIs and core/render/grids.py: what st.html does to a plain string, per MB."""
    import re

    body = ("<div class=\"c\"><div class=\"t\" style=\"background-position:0 -112px\"></div></div>\n" * 14000)
    mb = len(body) / 1e6
    dedent = best(lambda: textwrap.dedent(body), 5) / mb
    style = "<style>" + body + "</style>"
    scan = best(lambda: re.sub(r"<style[^>]*>.*?</style>", "", style, flags=re.DOTALL), 5) / mb
    RESULTS.append({"what": "st.html on a plain string, per MB", "textwrap.dedent": dedent,
                    "style-block regex": scan})
    print(f"st.html on a plain string, per MB: textwrap.dedent {_t(dedent)}, <style> block regex {_t(scan)}")


# ---- Streamlit and TensorFlow -------------------------------------------------------------------------


def cache_lookup(quick: bool) -> None:
    """ui/cache.py memo against st.cache_data for a hit with the arguments a scrub step passes."""
    import logging

    import streamlit as st

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    from ui.cache import memo

    args = ("/data/runs/demo-healthy", (("ckpt", 12, 1733200000, 123456),), "probe:000", "block3_conv2",
            ("viridis", "layer", "index", 0.0, 12, True, False, 112, 0))

    @st.cache_data(show_spinner=False)
    def streamlit_cached(a, b, c, d, e):
        return 1

    @memo(16)
    def memoised(a, b, c, d, e):
        return 1

    streamlit_cached(*args), memoised(*args)
    n = 200
    s = best(lambda: [streamlit_cached(*args) for _ in range(n)], 5) / n
    m = best(lambda: [memoised(*args) for _ in range(n)], 5) / n
    report("cache hit with a scrub step's arguments", "memo", m, "st.cache_data", s)


_TF = """
import time
t0 = time.perf_counter()
import keras  # noqa: F401
print(time.perf_counter() - t0)
"""


def tensorflow_import(quick: bool) -> None:
    """app.py starts importing TensorFlow while the browser loads the page: how long that import takes."""
    r = subprocess.run([sys.executable, "-c", _TF], capture_output=True, text=True, timeout=600, check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    t = float(r.stdout.split()[-1])
    RESULTS.append({"what": "import keras (TensorFlow) in a fresh process", "seconds": t})
    print(f"import keras (TensorFlow) in a fresh process: {_t(t)}")


def keras_clear_session(quick: bool) -> None:
    """ui/cache.py: Streamlit's clear_session after a script run, and the next forward pass after it."""
    import gc

    import keras
    import tensorflow as tf

    from core.training.models import ArchConfig, build_seed_net

    model = build_seed_net(ArchConfig(), seed=0)
    x = np.random.default_rng(0).random((1, *model.input_shape[1:])).astype(np.float32)
    fwd = tf.function(lambda t: model(t, training=False))
    fwd(x)
    warm = best(lambda: fwd(x), 5 if quick else 15)
    gc_time = best(gc.collect, 3)
    after = []
    for _ in range(3 if quick else 6):
        keras.backend.clear_session()  # what Streamlit's _clean_problem_modules does after every run
        t0 = time.perf_counter()
        fwd(x)
        after.append(time.perf_counter() - t0)
    report("forward pass of the built-in network, one image", "warm", warm, "first after clear_session",
           min(after))
    RESULTS.append({"what": "gc.collect with TensorFlow and a model loaded", "seconds": gc_time})
    print(f"gc.collect with TensorFlow and a model loaded: {_t(gc_time)}")


_GRAPPLER = """
import contextlib, sys, time
sys.path.insert(0, {root!r})
import core  # the product's settings
import keras, numpy as np
from core.engine import runtime
from core.engine.extract import Extractor
if {grappler!r}:
    runtime.engine_calls = contextlib.nullcontext  # TensorFlow's default: Grappler on
model = getattr(keras.applications, {name!r})(weights=None, input_shape=(224, 224, 3))
ex = Extractor(model)
w = ex.weights_from_model(model)
x = np.random.default_rng(0).random((8, 224, 224, 3)).astype(np.float32) * 255
ex.prepare_reduced()
t0 = time.perf_counter(); ex.run_reduced(w, x); first = time.perf_counter() - t0
later = []
for _ in range(5):
    t0 = time.perf_counter(); ex.run_reduced(w, x); later.append(time.perf_counter() - t0)
print(first, sorted(later)[2])
"""


def grappler(quick: bool) -> None:
    """core/engine/runtime.py calls the engine's functions without Grappler: first and later calls of a
    sweep's pass (taps reduced in the graph), keras.applications models at 224 px, 8 images, fresh
    processes taken in turns."""
    for name in ("MobileNetV3Small",) if quick else ("MobileNetV3Small", "EfficientNetB0"):
        got: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(1 if quick else 2):
            for on in (True, False):
                r = subprocess.run([sys.executable, "-c", _GRAPPLER.format(root=str(ROOT), grappler=on, name=name)],
                                   capture_output=True, text=True, timeout=900, check=True)
                first, later = map(float, r.stdout.split()[-2:])
                got[on].append((first, later))
        for i, what in enumerate(("first call", "later call (median of 5)")):
            report(f"{name} sweep pass, {what}, best of {len(got[True])} processes", "Grappler on",
                   min(v[i] for v in got[True]), "off (the engine)", min(v[i] for v in got[False]))


STEPS = [openblas_threads, chunk_sizes, colormap_gather, tile_label_format, png_writer, html_handling,
         cache_lookup, tensorflow_import, keras_clear_session, grappler]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for step in STEPS:
        step(args.quick)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "internals.json").write_text(json.dumps({"cores": os.cpu_count(), "load_at_end": os.getloadavg()[0],
                                                    "results": RESULTS}, indent=1))
    print(f"load average {os.getloadavg()[0]:.1f} at the end; written to {out / 'internals.json'}")


if __name__ == "__main__":
    main()
