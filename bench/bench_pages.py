"""Channel-grid page benchmark: the page script and its checkpoint fragment, server side (AppTest), against the floor.

    python bench/bench_pages.py [--run data/runs/demo-troubled | --seed-224] [--repeat 10] [--layer NAME]

Moving the scrubber reruns only the page's checkpoint fragment in a server (``st.fragment``;
AppTest reruns the whole page each time, so the fragment is timed on its own inside it):
(a) cached    a checkpoint whose activations and drawings are cached (a rerun, or scrubbing back
              to a checkpoint seen before). Target <= 150 ms.
(b) uncached  a checkpoint not extracted yet: read its weights, one forward pass of the probe image,
              draw. Target <= 1.5x the floor. Read-ahead is switched off for this case.
(c) ahead     stepping forward one checkpoint (Next, Play) after the page extracted it in the
              background (``ui.state.read_ahead_next``): what a user scrubbing forward sees.
floor         read the checkpoint's weights + one traced forward pass of the same image (batch 1),
              measured in this process with the same engine.
naive         drawing: the grid as one enlarged PNG with its labels drawn in (the page's former way),
              against the HTML of native-size tiles the page sends now.
Also printed: the whole page script (a rerun after changing a control) and AppTest end to end.
bench/bench_scrub.py measures the same steps in a real server with a real browser.
The run defaults to data/runs/demo-troubled when it exists, else a temporary tiny run is trained.
AppTest compiles the page on every run (a server caches it); "magic" is switched off here so
that this artifact costs ~5 ms instead of ~70 ms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


#: Timings of the page script, appended by the wrapper that AppTest runs (see ``timed_page``).
TIMER = types.ModuleType("_ade_page_timer")
TIMER.TIMES = []


def timed_page(folder: Path) -> Path:
    """A script that runs pages/grid.py (compiled once, as a server does) and records its duration."""
    page = REPO / "pages" / "grid.py"
    TIMER.CODE, TIMER.PATH = compile(page.read_text(), str(page), "exec"), str(page)
    sys.modules[TIMER.__name__] = TIMER
    wrapper = folder / "grid_timed.py"
    wrapper.write_text(
        "import sys, time\n"
        f"_m = sys.modules[{TIMER.__name__!r}]\n"
        "_t = time.perf_counter()\n"
        "try:\n"
        "    exec(_m.CODE, {'__name__': '__main__', '__file__': _m.PATH})\n"
        "finally:\n"
        "    _m.TIMES.append(time.perf_counter() - _t)\n")
    return wrapper


def pick_run(arg: str | None, tmp: Path) -> Path:
    """The run to measure: ``arg``, else data/runs/demo-troubled if it has >= 3 checkpoints, else a tiny run."""
    from core.run.runs import Run

    if arg:
        return Path(arg).resolve()
    demo = REPO / "data" / "runs" / "demo-troubled"
    try:
        if len(Run(demo).checkpoints()) >= 3:
            return demo
    except Exception:
        pass
    from tests.fixtures import make_tiny_run

    print("demo-troubled not found: training a temporary tiny run (~15 s)")
    make_tiny_run(tmp, "bench-tiny", mini_epochs=8)
    return tmp / "bench-tiny"


def floor_ms(run_dir: Path, mini_epochs: list[int], image, pause: float = 0.0) -> float:
    """Median ms of weights read + one forward pass of one image, same engine as the page uses.

    ``pause``: seconds of idle before each step, as between a user's scrub steps (an idle CPU
    and cold caches make the same step ~1.5x slower than in a tight loop).
    """
    from core.run.runs import Run
    from ui import cache

    run = Run(run_dir)
    eng = cache.engine(str(run_dir), cache.arch_mtime(run), False)
    x = eng.preprocess(image[None])
    eng.extractor.run(eng.weight_values(eng.read_weights(run.checkpoint(mini_epochs[0]))), x)  # warm
    out = []
    for me in mini_epochs:
        c = run.checkpoint(me)
        time.sleep(pause)
        t = time.perf_counter()
        eng.extractor.run(eng.weight_values(eng.read_weights(c)), x)
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def drawing_ms(run_dir: Path, mini_epochs: list[int], image, layer: str) -> tuple[float, float]:
    """Median ms to draw the grid of ``layer`` and the channel view at a checkpoint seen for the first time.

    (as the page draws them: HTML with native-size tiles, ``core.render.grids.grid_html``; the way it drew
    them before: the enlarged grid composed with its labels and encoded as one PNG)
    """
    from core.render import grids
    from core.run.runs import Run
    from ui import cache

    run = Run(run_dir)
    eng = cache.engine(str(run_dir), cache.arch_mtime(run), False)
    html, png = [], []
    for me in mini_epochs:
        maps = grids.channel_maps(eng.activations(run.checkpoint(me), image[None])[layer])
        t = time.perf_counter()
        grids.grid_html(maps, mode="layer", tile_px=88)
        grids.channel_view_html(maps[0], -1.0, 1.0, "viridis", 280)
        html.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        grids.to_png(grids.grid_image(maps, mode="layer", tile_px=88).pixels)
        k = grids.upscale_factor(*maps.shape[1:], 280)
        grids.to_png(grids.upscale(grids.apply_colormap(grids.normalise(maps[:1], [-1.0], [1.0]),
                                                        grids.colormap("viridis")), k)[0])
        png.append((time.perf_counter() - t) * 1e3)
    return statistics.median(html), statistics.median(png)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run directory (default: data/runs/demo-troubled or a temporary tiny run)")
    ap.add_argument("--repeat", type=int, default=10, help="reruns for the cached case")
    ap.add_argument("--layer", help="layer to show (default: the page's default, the first tap)")
    ap.add_argument("--seed-224", action="store_true",
                    help="measure on a temporary run of the 1.5 M-parameter 224 px network (7 checkpoints)")
    args = ap.parse_args()

    from streamlit import config
    from streamlit.testing.v1 import AppTest

    config.set_option("runner.magicEnabled", False)
    with tempfile.TemporaryDirectory() as tmpd:
        if args.seed_224:
            import dataclasses

            from bench_sweep import make_bench_run
            from core.training.models import ArchConfig

            arch = dataclasses.replace(ArchConfig(), input_size=224, widths=(64, 96, 128, 192, 256))
            run_dir = make_bench_run(Path(tmpd), "seed-224", arch, 6, 8)
        else:
            run_dir = pick_run(args.run, Path(tmpd))
        from core.run.runs import Run

        run = Run(run_dir)
        mes = [c.mini_epoch for c in run.checkpoints()]
        os.environ["ADE_RUNS_ROOT"] = str(run_dir.parent)
        at = AppTest.from_file(str(timed_page(Path(tmpd))), default_timeout=300)
        at.query_params.update({"run": run_dir.name, "ckpt": str(mes[0])} | ({"layer": args.layer} if args.layer else {}))
        t = time.perf_counter()
        at.run()
        first = time.perf_counter() - t
        if at.exception:
            print("page raised:", [e.message for e in at.exception])
            return 1
        layer = at.selectbox(key="w_layer").value
        shape = next((m.value for m in at.markdown if str(m.value).startswith("**")), "")

        from ui import state

        state.FRAGMENT_TIMES = {}

        def timed() -> tuple[float, float, float]:
            """(AppTest run, page script alone, checkpoint fragment alone) in ms."""
            t0 = time.perf_counter()
            at.run()
            dt = (time.perf_counter() - t0) * 1e3
            assert not at.exception, [e.message for e in at.exception]
            return dt, TIMER.TIMES[-1] * 1e3, state.FRAGMENT_TIMES["grid"][-1] * 1e3

        cached = [timed() for _ in range(args.repeat)]
        todo = mes[1:]
        from ui import cache, grid_cache

        state.READ_AHEAD = False  # (b): every checkpoint cold
        uncached = []
        for me in todo:
            at.select_slider(key="w_ckpt").set_value(me)
            uncached.append(timed())
        state.READ_AHEAD = True
        scrub_back = []
        for me in todo[: args.repeat]:
            at.select_slider(key="w_ckpt").set_value(me)
            scrub_back.append(timed())
        # (c): stepping forward as Next / Play do, with the read-ahead of the next checkpoint
        for fn in (cache.image_activations, cache.image_layer, cache.layer_maps, grid_cache.grid):
            fn.clear()
        at.select_slider(key="w_ckpt").set_value(mes[0])
        timed()
        ahead = []
        for me in todo:
            t_wait = time.perf_counter()
            while not cache.read_ahead_idle() and time.perf_counter() - t_wait < 10:
                time.sleep(0.002)
            at.select_slider(key="w_ckpt").set_value(me)
            ahead.append(timed())
        from core.engine.engine import run_probe_set

        image = run_probe_set(run).images[0]
        fl = floor_ms(run_dir, todo, image)
        dr, dr_png = drawing_ms(run_dir, todo, image, layer)

    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    a, b, sb, c = (med(xs, 0) for xs in (cached, uncached, scrub_back, ahead))
    sa, sbb, sc = (med(xs, 1) for xs in (cached, uncached, ahead))
    fa, fb, fc = (med(xs, 2) for xs in (cached, uncached, ahead))
    print(f"run {run_dir}  ({len(mes)} checkpoints, input {run.manifest.input_shape})")
    print(f"layer {layer}: {shape}")
    print(f"first page run (TensorFlow import, engine build, trace): {first:.1f} s")
    print("a scrub step = the checkpoint fragment, which is what a server reruns when the slider moves:")
    print(f"(a) cached checkpoint                     median {fa:7.1f} ms  (n={len(cached)}; target <= 150 ms)  "
          f"{'OK' if fa <= 150 else 'OVER'}")
    print(f"(b) checkpoint not yet extracted          median {fb:7.1f} ms  (n={len(uncached)}) = {fb / fl:.2f}x floor "
          f"(target <= 1.5x)  {'OK' if fb / fl <= 1.5 else 'OVER'}")
    print(f"(c) next checkpoint, read ahead           median {fc:7.1f} ms  (n={len(ahead)}) = {fc / fl:.2f}x floor "
          "(Next / Play after the page had time to extract it in the background)")
    print(f"floor: weights read + one forward pass    median {fl:7.1f} ms  (same engine, tight loop)")
    print(f"drawing a new grid and channel view       median {dr:7.1f} ms  (HTML of native-size tiles, measured "
          f"outside the page; as one enlarged PNG with labels: {dr_png:.1f} ms = {dr_png / max(dr, 1e-9):.0f}x)")
    print(f"extraction inside the fragment            ~{fb - fa - dr:6.1f} ms = {(fb - fa - dr) / fl:.2f}x floor  "
          "((b) - (a) - drawing)")
    print(f"whole page script (a rerun after changing a control): (a) {sa:.1f} ms, (b) {sbb:.1f} ms "
          f"= {sbb / fl:.2f}x floor, (c) {sc:.1f} ms")
    print(f"AppTest end to end (the whole page + AppTest's own work): (a) {a:.1f} ms, scrub back {sb:.1f} ms, "
          f"(b) {b:.1f} ms, (c) {c:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
