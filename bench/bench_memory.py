"""Memory benchmark: peak RSS of separate processes, against the bounds the design promises.

    python bench/bench_memory.py [--only sweep,probes,bombs,app] [--app-checkpoints 500] [--json out.json]

sweep   CLI ``python -m core sweep`` of the demo network with 20 and with 200 checkpoints, first
        run and cached re-run: the 200-checkpoint peak must be within +10 % of the 20-checkpoint peak.
probes  the same sweep of 4 checkpoints with 32 and with 1000 probe images: the growth must stay below
        what holding every probe's activations at once would take (the engine runs batches of
        ``PROBE_BATCH``); the tables themselves grow linearly with the probes.
bombs   a ~100 KB 16-bit 7000x7000 PNG as ``--probe`` and a ~1 MB ``probes.npz`` declaring a 2 GiB
        array: each refused by the CLI with one ``error:`` line, peak RSS < 300 MB.
app     the Overview page (Streamlit AppTest, the server's script code in one process) of a
        500-checkpoint run: RSS after it, above the RSS after the Overview of a 2-checkpoint run
        (same process, TensorFlow and the app already loaded), must be < 1.5 GB.

Each measurement is a fresh child process; its peak is ``ru_maxrss`` of that child. Exit status
1 when a bound is exceeded.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MB = 2 ** 20


def peak_mb(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``cmd`` in a fresh wrapper process; (peak RSS of ``cmd`` in MB, its completed process)."""
    wrapper = ("import resource, subprocess, sys, json\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(json.dumps({'rc': p.returncode, 'out': p.stdout[-4000:], 'err': p.stderr[-4000:],"
               " 'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, cwd=str(REPO))
    d = json.loads(p.stdout.strip().splitlines()[-1])
    return d["kb"] / 1024, subprocess.CompletedProcess(cmd, d["rc"], d["out"], d["err"])


def make_run(root: Path, name: str, n_ckpt: int, n_probe: int) -> Path:
    """A run of the demo network (default ArchConfig) with drifting weights and a history."""
    import pandas as pd

    from bench.bench_sweep import make_bench_run
    from core.run.runs import RunWriter
    from core.training.models import ArchConfig

    d = make_bench_run(root, name, ArchConfig(), n_ckpt, n_probe)
    rows = [{"mini_epoch": k, "images_seen": 2000 * k, "wall_time": float(k), "loss": 3.0 / k, "accuracy": 0.5,
             "val_loss": 3.0 / k, "val_accuracy": 0.5, "lr": 5e-4} for k in range(1, n_ckpt + 1)]
    RunWriter(d).write_history(pd.DataFrame(rows))
    return d


def sweep_cmd(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "core", "sweep", name, "--runs-root", str(root), *extra]


def bench_sweep(root: Path) -> dict:
    out = {}
    for n in (20, 200):
        make_run(root, f"c{n}", n, 32)
        for label in ("first", "cached"):
            mb, p = peak_mb(sweep_cmd(root, f"c{n}"))
            assert p.returncode == 0, p.stderr
            out[f"{n}_{label}"] = mb
            print(f"sweep {n:>3} checkpoints, {label:6}: peak {mb:7.0f} MB", flush=True)
    out["ratio_first"] = out["200_first"] / out["20_first"]
    out["ratio_cached"] = out["200_cached"] / out["20_cached"]
    out["ok"] = out["ratio_first"] <= 1.10 and out["ratio_cached"] <= 1.10
    print(f"  200 vs 20: first {100 * (out['ratio_first'] - 1):+.1f} %, cached {100 * (out['ratio_cached'] - 1):+.1f} % "
          f"(bound +10 %)", flush=True)
    return out


def activation_mb_per_image(run_dir: Path) -> float:
    """Bytes of every tap's activations for one probe image (what the engine would hold per image)."""
    code = ("import sys, numpy as np\nfrom core.run.runs import Run\nfrom core.engine.engine import RunEngine\n"
            "run = Run(sys.argv[1]); e = RunEngine(run)\n"
            "x = e.preprocess(run.probes()[0][:1]); wv = e.weight_values(e.read_weights(run.checkpoints()[0]))\n"
            "print(sum(a.nbytes for a in e.extractor.run(wv, x).values()) / 2**20)")
    p = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    return float(p.stdout.strip().splitlines()[-1])


def bench_probes(root: Path) -> dict:
    from core.analysis.sweep import PROBE_BATCH

    out = {}
    for n in (32, 1000):
        make_run(root, f"p{n}", 4, n)
        mb, p = peak_mb(sweep_cmd(root, f"p{n}"))
        assert p.returncode == 0, p.stderr
        out[f"{n}"] = mb
        print(f"sweep 4 checkpoints, {n:>4} probes: peak {mb:7.0f} MB", flush=True)
    per_image = activation_mb_per_image(root / "p32")
    growth = out["1000"] - out["32"]
    all_at_once = (1000 - 32) * per_image
    out.update(act_mb_per_image=per_image, growth_mb=growth, all_activations_mb=all_at_once,
               ok=growth < all_at_once)
    print(f"  growth {growth:.0f} MB for 968 more probes; their activations at once would be {all_at_once:.0f} MB "
          f"({per_image:.2f} MB per image; the engine holds {PROBE_BATCH} at a time)", flush=True)
    return out


def png_bomb(path: Path) -> None:
    """A 16-bit greyscale 7000x7000 PNG of a few hundred KB at most (a smooth ramp compresses well)."""
    from PIL import Image

    row = (np.arange(7000, dtype=np.uint32) * 9).astype(np.uint16)
    Image.fromarray(np.broadcast_to(row, (7000, 7000)).copy()).save(path, optimize=True)


def npz_bomb(path: Path, declared=(2 ** 20, 64, 64, 3)) -> None:
    """A deflated ``x`` member declaring ``declared`` uint8 (12 GiB) holding 32 MB of zeros, and a small ``y``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": declared})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for _ in range(8):
                f.write(bytes(4 * MB))
        buf = io.BytesIO()
        np.save(buf, np.zeros(declared[0], np.int64)[:8])
        z.writestr("y.npy", buf.getvalue())


def bench_bombs(root: Path) -> dict:
    import shutil

    make_run(root, "bombs", 2, 8)
    png = root / "bomb16.png"
    png_bomb(png)
    out = {"png_kb": png.stat().st_size / 1024}
    t = time.perf_counter()
    mb, p = peak_mb(sweep_cmd(root, "bombs", "--probe", str(png)))
    out.update(png_peak_mb=mb, png_s=time.perf_counter() - t, png_rc=p.returncode, png_err=p.stderr.strip())
    print(f"16-bit 7000x7000 PNG ({out['png_kb']:.0f} KB) as --probe: rc {p.returncode}, peak {mb:.0f} MB, "
          f"{out['png_s']:.1f} s: {p.stderr.strip()[:160]}", flush=True)
    bad = root / "npzbomb"
    shutil.copytree(root / "bombs", bad)
    npz_bomb(bad / "probes.npz")
    out["npz_mb"] = (bad / "probes.npz").stat().st_size / MB
    mb2, p2 = peak_mb(sweep_cmd(root, "npzbomb"))
    out.update(npz_peak_mb=mb2, npz_rc=p2.returncode, npz_err=p2.stderr.strip())
    print(f"probes.npz of {out['npz_mb']:.1f} MB declaring 12 GiB: rc {p2.returncode}, peak {mb2:.0f} MB: "
          f"{p2.stderr.strip()[:160]}", flush=True)
    out["ok"] = all([p.returncode == 2, p2.returncode == 2, mb < 300, mb2 < 300,
                     p.stderr.count("error:") == 1, p2.stderr.count("error:") == 1])
    return out


APP_CODE = r"""
import json, os, sys
from streamlit.testing.v1 import AppTest

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def overview(run):
    at = AppTest.from_file(sys.argv[1], default_timeout=3600)
    at.query_params["run"] = run
    at.query_params["page"] = "overview"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any("finding" in str(m.value).lower() for m in [*at.markdown, *at.caption, *at.subheader, *at.info,
                                                          *at.success]), "no findings shown"
    return at

overview(sys.argv[2])
idle = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
at = overview(sys.argv[3])
after = status("VmRSS")
peak = status("VmHWM")
print(json.dumps({"idle_mb": idle, "after_mb": after, "peak_mb": peak}))
"""


def bench_app(root: Path, n_ckpt: int) -> dict:
    make_run(root, "small", 2, 32)
    make_run(root, "big", n_ckpt, 32)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", APP_CODE, str(REPO / "explorer.py"), "small", "big"],
                       capture_output=True, text=True, cwd=str(REPO),
                       env={**os.environ, "PYTHONPATH": str(REPO), "ADE_RUNS_ROOT": str(root)})
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(seconds=time.perf_counter() - t, above_idle_mb=out["after_mb"] - out["idle_mb"], checkpoints=n_ckpt)
    out["ok"] = out["above_idle_mb"] < 1536
    print(f"app Overview of {n_ckpt} checkpoints: idle {out['idle_mb']:.0f} MB, after {out['after_mb']:.0f} MB "
          f"(+{out['above_idle_mb']:.0f} MB, bound 1536), peak {out['peak_mb']:.0f} MB, {out['seconds']:.0f} s",
          flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="sweep,probes,bombs,app")
    ap.add_argument("--app-checkpoints", type=int, default=500)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other work shares them)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="ade-mem-") as tmp:
        for name in args.only.split(","):
            root = Path(tmp) / name
            root.mkdir()
            fn = {"sweep": bench_sweep, "probes": bench_probes, "bombs": bench_bombs,
                  "app": lambda r: bench_app(r, args.app_checkpoints)}[name]
            results[name] = fn(root)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    bad = [k for k, v in results.items() if not v.get("ok")]
    print("all bounds held" if not bad else f"bounds exceeded: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
