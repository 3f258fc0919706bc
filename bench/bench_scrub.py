"""Scrubbing in a real browser: server-side time of each script run as the slider moves, against the floor.

    python bench/bench_scrub.py [--run DIR | --seed-224] [--steps 8]

Starts ``streamlit run app.py`` through bench/timed_server.py, which times every script run
inside the server (full reruns and fragment reruns alike), opens the channel grid page in
headless Chromium (Debian's /usr/bin/chromium) and moves the checkpoint slider with the arrow
keys, waiting until each run is over and checking that the grid image changed.

(b) cold     ArrowRight to a checkpoint never extracted, read-ahead off (ADE_READ_AHEAD=0):
             read its weights, one forward pass, draw. Target <= 1.5x the floor.
(a) back     ArrowLeft to a checkpoint shown before: cached activations and images. Target <= 150 ms.
(c) ahead    ArrowRight with read-ahead on (a second server): the step Next and Play make.
full         a full rerun of the page ("r" key, cached): what each scrub step cost when the
             scrubber reran the whole page.
floor        weights read + one traced forward pass of the same image (batch 1), in this process,
             each step after the same idle pause as the scrub steps (PAUSE).
naive        weights assigned to the Keras model + ``predict`` of a sub-model to the layer shown.
The run defaults to data/runs/demo-troubled when it exists, else a temporary tiny run is trained.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from tests.e2e.browser import CHROME_ARGS, CHROMIUM, GRID, grid_is_painted, grid_src, idle, start_app, stop_app  # noqa: E402

PAUSE = 0.5  # seconds between scrub steps, and before each step of the floor and the naive way


class Server:
    """``bench/timed_server.py app.py`` on a free port; ``times()`` are the runs recorded since ``mark()``."""

    def __init__(self, root: Path, tmp: Path, read_ahead: bool, profile: str | None = None) -> None:
        self.log, self.times_file = tmp / f"server-{read_ahead}.log", tmp / f"times-{read_ahead}.jsonl"
        env = dict(os.environ, ADE_BENCH_TIMES=str(self.times_file), ADE_READ_AHEAD="1" if read_ahead else "0")
        if profile:
            env["ADE_BENCH_PROFILE"] = profile
        self.proc, self.url = start_app([sys.executable, str(REPO / "bench" / "timed_server.py")], root, self.log,
                                        env)

    def mark(self) -> None:
        self.times_file.write_text("")

    def times(self) -> list[dict]:
        return [json.loads(line) for line in self.times_file.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_app(self.proc)


def scrub(server: Server, browser, run: str, first: int, layer: str | None, steps: int,
          back: bool) -> dict[str, list[dict]]:
    """Open the grid page at ``first`` and press ArrowRight ``steps`` times (then ArrowLeft as often if ``back``)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    q = f"run={run}&ckpt={first}" + (f"&layer={layer}" if layer else "")
    page.goto(f"{server.url}/grid?{q}")
    page.wait_for_selector(GRID, timeout=180_000)
    idle(page, settle_ms=150)
    page.wait_for_timeout(1500)  # let the first run's background work end
    out: dict[str, list[dict]] = {}
    for key, n in (("ArrowRight", steps), ("ArrowLeft", steps if back else 0)):
        recs = []
        for _ in range(n):
            before = grid_src(page)
            server.mark()
            thumb = page.locator('[data-testid="stSidebar"]').get_by_role("slider").first
            thumb.focus()
            page.keyboard.press(key)
            idle(page, settle_ms=150)
            t_end = time.monotonic() + 10
            while grid_src(page) in ("", before):  # "" while the page redraws
                if time.monotonic() > t_end:
                    raise RuntimeError(f"the grid image did not change after {key}")
                page.wait_for_timeout(50)
            page.wait_for_timeout(PAUSE * 1e3)  # a user's pace; read-ahead (when on) ends meanwhile
            recs.extend(server.times())
        out[key] = recs
    server.mark()
    for _ in range(5):  # full reruns ("r"), everything cached
        page.locator("h1").first.click()
        page.keyboard.press("r")
        idle(page, settle_ms=150)
    out["full"] = server.times()
    page.close()
    return out


def naive_ms(run_dir: Path, mes: list[int], image, layer: str) -> float:
    """Median ms: weights assigned to the Keras model + predict of a sub-model up to ``layer`` (batch 1)."""
    import keras

    from core.run.runs import Run

    run = Run(run_dir)
    model = run.load_model()
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    x = image[None].astype("float32")
    out = []
    for me in mes:
        time.sleep(PAUSE)
        t = time.perf_counter()
        run.load_weights_into(model, me)
        sub.predict(x, verbose=0)
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run directory (default: data/runs/demo-troubled or a temporary tiny run)")
    ap.add_argument("--seed-224", action="store_true", help="a temporary run of the 1.5 M-parameter 224 px network")
    ap.add_argument("--steps", type=int, default=8, help="slider steps (at most the run's checkpoints - 1)")
    ap.add_argument("--layer", help="layer shown (default: the page's default, the first tap)")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the fragment runs of the read-ahead-off server "
                    "(cold and back steps) into FILE (python -m pstats FILE)")
    args = ap.parse_args()
    if not CHROMIUM.exists():
        print("needs Debian's chromium (apt-get install chromium) and playwright (pip install playwright)")
        return 2
    from playwright.sync_api import sync_playwright

    from bench_pages import floor_ms, pick_run

    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        if args.seed_224:
            import dataclasses

            from bench_sweep import make_bench_run
            from core.training.models import ArchConfig

            arch = dataclasses.replace(ArchConfig(), input_size=224, widths=(64, 96, 128, 192, 256))
            run_dir = make_bench_run(tmp, "seed-224", arch, 8, 8)
        else:
            run_dir = pick_run(args.run, tmp)
        from core.engine.engine import RunEngine, run_probe_set
        from core.run.runs import Run

        run = Run(run_dir)
        mes = [c.mini_epoch for c in run.checkpoints()]
        steps = min(args.steps, len(mes) - 1)
        layer = args.layer or RunEngine(run).taps[0]
        res = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
            try:
                for ahead in (False, True):
                    server = Server(run_dir.parent, tmp, ahead, None if ahead else args.profile)
                    try:
                        res[ahead] = scrub(server, browser, run_dir.name, mes[0], args.layer, steps, back=not ahead)
                    finally:
                        server.stop()
            finally:
                browser.close()
        image = run_probe_set(run).images[0]
        fl = floor_ms(run_dir, mes[1:steps + 1], image, pause=PAUSE)
        fl_hot = floor_ms(run_dir, mes[1:steps + 1], image)
        nv = naive_ms(run_dir, mes[1:steps + 1], image, layer)

    def med(recs: list[dict], fragment: bool) -> tuple[float, int]:
        xs = [r["ms"] for r in recs if r["fragment"] == fragment and not r["auto"]]
        return (statistics.median(xs) if xs else float("nan")), len(xs)

    cold, n_cold = med(res[False]["ArrowRight"], True)
    back, n_back = med(res[False]["ArrowLeft"], True)
    ahead, n_ahead = med(res[True]["ArrowRight"], True)
    full, n_full = med(res[False]["full"], False)
    extra = sum(1 for r in res[False]["ArrowRight"] + res[True]["ArrowRight"] if not r["fragment"])
    print(f"run {run_dir}  ({len(mes)} checkpoints, input {run.manifest.input_shape}), layer {layer}")
    print("server-side time of each script run (bench/timed_server.py), slider moved in headless Chromium")
    print(f"(b) cold step, not extracted yet    median {cold:7.1f} ms  (n={n_cold})  = {cold / fl:.2f}x floor "
          f"(target <= 1.5x)  {'OK' if cold / fl <= 1.5 else 'OVER'}")
    print(f"(a) back to a checkpoint shown      median {back:7.1f} ms  (n={n_back})  (target <= 150 ms)  "
          f"{'OK' if back <= 150 else 'OVER'}")
    print(f"(c) next step, read ahead           median {ahead:7.1f} ms  (n={n_ahead})  = {ahead / fl:.2f}x floor")
    print(f"full rerun of the page (cached)     median {full:7.1f} ms  (n={n_full})  (each step before the fragment)")
    print(f"floor: weights read + forward pass  median {fl:7.1f} ms  (after {PAUSE} s idle, as the steps above; "
          f"{fl_hot:.1f} ms in a tight loop)")
    print(f"naive: assign weights + predict     median {nv:7.1f} ms  = {nv / cold:.1f}x our cold step")
    gc_cold = [r.get("gc_ms", 0.0) for r in res[False]["ArrowRight"] if r["fragment"]]
    if gc_cold:
        print(f"Python's garbage collector during the cold steps: median {statistics.median(gc_cold):.1f} ms, "
              f"max {max(gc_cold):.1f} ms")
    if extra:
        print(f"ERROR: {extra} slider steps ran the whole page instead of the checkpoint fragment")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
