"""Bad runs, each built from a copy of the ``tiny`` fixture run: every problem is reported naming the
file, and what is still usable stays usable (core); the Overview and Channel grid pages show it
without an exception (app). Run with ``-s`` for the summary table.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import assert_no_exception, copy_tiny, messages, new_app, table

# name -> (what was done, the file every message must name, mini-epochs that must stay usable)
CASES: dict[str, tuple[str, str, list[int]]] = {
    "good": ("an intact copy (control)", "", [0, 1, 2, 3]),
    "no-manifest": ("manifest.json deleted", "manifest.json", []),
    "garbage-manifest": ("manifest.json is not JSON", "manifest.json", []),
    "future-format": ("manifest format_version 99", "manifest.json", []),
    "truncated-weights": ("ckpt 2 cut to half its size", "ckpt_000002.npz", [0, 1, 3]),
    "zero-byte-ckpt": ("ckpt 2 is an empty file", "ckpt_000002.npz", [0, 1, 3]),
    "other-arch": ("ckpt 2 from the no-SE network, ckpt 3 one kernel of another shape",
                   "ckpt_000002.npz", [0, 1]),
    "gap": ("ckpt 2 deleted (history row kept)", "checkpoints", [0, 1, 3]),
    "torn-history": ("history.csv: malformed row 2, torn last row", "history.csv", [0, 1, 2, 3]),
    "nan-weights": ("NaN in a kernel from ckpt 2, Inf in another at ckpt 3", "", [0, 1, 2, 3]),
    "pickled-probes": ("probes.npz 'x' is a pickled object array", "probes.npz", [0, 1, 2, 3]),
    "pickled-ckpt": ("ckpt 1 holds a pickled object array", "ckpt_000001.npz", [0, 2, 3]),
    "truncated-model": ("model.keras cut to half its size", "model.keras", []),
    "empty": ("manifest only", "model.keras", []),
}
TARGET_CKPT = {"pickled-ckpt": 1, "truncated-weights": 2, "zero-byte-ckpt": 3, "other-arch": 2, "gap": 3, "nan-weights": 2}


class _Evil:
    """Pickled into probes.npz: unpickling it would create a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _build(root: Path, tiny: Path, nose: Path) -> None:
    from core.run.runs import read_npz_weights

    for name in CASES:
        d = copy_tiny(tiny, root / name)
        ck = d / "checkpoints"
        if name == "no-manifest":
            (d / "manifest.json").unlink()
        elif name == "garbage-manifest":
            (d / "manifest.json").write_bytes(b'{"format": "activation-dynamics-run", "format_vers\x00\xff')
        elif name == "future-format":
            m = json.loads((d / "manifest.json").read_text())
            m["format_version"] = 99
            (d / "manifest.json").write_text(json.dumps(m))
        elif name == "truncated-weights":
            p = ck / "ckpt_000002.npz"
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif name == "zero-byte-ckpt":
            (ck / "ckpt_000002.npz").write_bytes(b"")
        elif name == "other-arch":
            shutil.copy(nose / "checkpoints" / "ckpt_000002.npz", ck / "ckpt_000002.npz")
            a = read_npz_weights(ck / "ckpt_000003.npz")
            k = next(k for k in a if k.endswith("/kernel") and a[k].ndim == 4)
            a[k] = np.zeros((*a[k].shape[:-1], a[k].shape[-1] + 1), a[k].dtype)
            np.savez(ck / "ckpt_000003.npz", **a)
        elif name == "gap":
            (ck / "ckpt_000002.npz").unlink()
        elif name == "torn-history":
            lines = (d / "history.csv").read_text().splitlines()
            f = lines[2].split(",")
            f[3] = "not-a-number"
            lines[2] = ",".join(f)
            (d / "history.csv").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
        elif name == "nan-weights":
            for me, val in ((2, np.nan), (3, np.inf)):
                a = read_npz_weights(ck / f"ckpt_{me:06d}.npz")
                k = sorted(k for k in a if k.endswith("/kernel"))[me]
                a[k] = np.full_like(a[k], val)
                np.savez(ck / f"ckpt_{me:06d}.npz", **a)
        elif name == "pickled-probes":
            with np.load(d / "probes.npz") as z:
                y = z["y"]
            np.savez(d / "probes.npz", x=np.array([_Evil(str(root / "PICKLE_RAN"))], dtype=object), y=y)
        elif name == "pickled-ckpt":
            a = read_npz_weights(ck / "ckpt_000001.npz")
            a[next(iter(a))] = np.array([_Evil(str(root / "PICKLE_RAN"))], dtype=object)
            np.savez(ck / "ckpt_000001.npz", **a)
        elif name == "truncated-model":
            p = d / "model.keras"
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif name == "empty":
            for p in d.iterdir():
                if p.name != "manifest.json":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory, runs_root) -> Path:
    # everything is built before the first app run: the app's run list is cached for 5 s
    root = tmp_path_factory.mktemp("bad_runs")
    _build(root, runs_root / "tiny", runs_root / "tiny-nose")
    _build_many_bad(root, runs_root)
    return root


def _names(msgs, fname: str) -> bool:
    return any(fname in m for m in msgs)


def test_core_each_bad_run_names_the_file_and_the_rest_stays_usable(bad_root, engine8):
    """open_run / checkpoints / history / read_weights / sweep on each bad run.

    The sweeps share one RunEngine built on an intact copy of the same architecture (as the
    app's cache_resource shares one per run), which keeps this test at a few seconds.
    """
    from core.engine.engine import run_probe_set
    from core.run.loading import ModelLoadError
    from core.run.runs import Run, RunError, list_runs, open_run
    from core.analysis.sweep import SweepOptions, sweep

    fast = SweepOptions(train_mode=False, gradients=False)
    listed = {i.name: i for i in list_runs(bad_root)}
    good_probes = run_probe_set(Run(bad_root / "good"))
    rows, failures = [], []
    for name, (what, fname, usable) in CASES.items():
        msgs: list[str] = []
        swept: list[int] = []
        try:
            run = open_run(bad_root, name)
        except RunError as e:
            msgs.append(str(e))
            run = None
        if name == "no-manifest":
            assert name not in listed  # not a run: not offered in the picker
        elif run is None:
            assert listed[name].error and fname in listed[name].error, listed[name]
        if run is not None:
            ckpts = run.checkpoints()
            run.history()
            for c in ckpts:
                try:
                    run.read_weights(c)
                except RunError as e:
                    msgs.append(str(e))
            try:
                probes = run_probe_set(run)
            except RunError as e:
                msgs.append(str(e))
                probes = good_probes  # the run's probe set is unusable: sweep with other images
            try:
                if not (run.path / "model.keras").exists() or name == "truncated-model":
                    run.load_model()  # what RunEngine(run) does first
                res = sweep(run, probes if len(probes) else good_probes, engine=engine8, options=fast)
                msgs += res.problems
                swept = res.mini_epochs
                if name == "nan-weights":
                    ex = res.extras.set_index("mini_epoch")
                    assert ex.loc[2, "n_nan_weights"] > 0 and ex.loc[3, "n_inf_weights"] > 0
                    assert ex.loc[1, "n_nan_weights"] == 0
                    try:
                        from core.analysis.diagnose import diagnose
                    except ImportError:
                        diagnose = None
                    if diagnose is not None:
                        f = [f for f in diagnose(res, run.history()) if f.kind == "nan_inf"]
                        assert f and f[0].mini_epoch == 2, f
                        msgs.append(f"finding: {f[0].message}")
            except (ModelLoadError, RunError) as e:
                msgs.append(str(e))
            msgs += run.problems
        ok_named = not fname or _names(msgs, fname)
        ok_usable = swept == usable
        if not ok_named:
            failures.append(f"{name}: no message names {fname}: {msgs}")
        if not ok_usable:
            failures.append(f"{name}: usable mini-epochs {swept}, expected {usable}")
        if name == "good" and msgs:
            failures.append(f"good: unexpected problems {msgs}")
        rows.append((name, what[:44], fname or "-", "yes" if ok_named else "NO", swept,
                     (msgs[0] if msgs else "")[-100:]))
    assert not (bad_root / "PICKLE_RAN").exists(), "a pickled object in probes.npz was unpickled"
    print("\n\nBad runs, core level:")
    print(table(rows, ("run", "damage", "file", "named", "swept mini-epochs", "first message (tail)")))
    assert not failures, "\n".join(failures)


def test_core_bad_checkpoint_error_names_the_file(bad_root, engine8):
    """RunEngine.activations on a checkpoint from another architecture names the checkpoint file."""
    from core.run.runs import Run, RunError

    run = Run(bad_root / "other-arch")
    x = run.probes()[0][:1]
    for me in (2, 3):
        c = run.checkpoint(me)
        with pytest.raises((ValueError, RunError)) as ei:
            engine8.activations(c, x)
        assert c.path.name in str(ei.value), str(ei.value)
    assert engine8.activations(run.checkpoint(1), x)  # the good ones still work with the same engine


# ---- app level ---------------------------------------------------------------------------------
# Runs that break at the manifest/architecture level are cheap for the app (no sweep): one run each.
# Checkpoint- and history-level damage is gathered in ONE run, "many-bad" (one engine build and one
# probe-set sweep instead of eight on this 2-core machine): every damaged file must still be named.

MANY_BAD = {  # mini-epoch -> (damage, file the message must name)
    1: ("pickled object array", "ckpt_000001.npz"),
    2: ("truncated to half", "ckpt_000002.npz"),
    3: ("zero bytes", "ckpt_000003.npz"),
    4: ("from the no-SE architecture", "ckpt_000004.npz"),
    5: ("deleted (history row kept): a gap", "checkpoints"),
    6: ("NaN kernel in stem_conv", "NaN"),
}
LISTING_LEVEL = (3, 5)  # found by listing the run (no checkpoint is read)
SWEEP_LEVEL = (1, 2, 4)  # found only when the checkpoint is read


def _build_many_bad(bad_root: Path, runs_root: Path) -> None:
    """Checkpoints 0..7 of the tiny run, damaged as MANY_BAD says, plus a torn and a malformed history row."""
    from core.run.runs import read_npz_weights
    from tests.reliability.conftest import add_checkpoints

    d = copy_tiny(runs_root / "tiny", bad_root / "many-bad")
    add_checkpoints(d, 7)
    ck = d / "checkpoints"
    a = read_npz_weights(ck / "ckpt_000001.npz")
    a[next(iter(a))] = np.array([_Evil(str(bad_root / "PICKLE_RAN"))], dtype=object)
    np.savez(ck / "ckpt_000001.npz", **a)
    p = ck / "ckpt_000002.npz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    (ck / "ckpt_000003.npz").write_bytes(b"")
    shutil.copy(runs_root / "tiny-nose" / "checkpoints" / "ckpt_000002.npz", ck / "ckpt_000004.npz")
    (ck / "ckpt_000005.npz").unlink()
    a = read_npz_weights(ck / "ckpt_000006.npz")
    a["stem_conv/kernel"] = np.full_like(a["stem_conv/kernel"], np.nan)
    np.savez(ck / "ckpt_000006.npz", **a)
    lines = (d / "history.csv").read_text().splitlines()
    f = lines[2].split(",")
    f[3] = "not-a-number"
    lines[2] = ",".join(f)
    (d / "history.csv").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])


@pytest.fixture(scope="module")
def many_bad(bad_root) -> str:
    return "many-bad"


@pytest.fixture(scope="module")
def many_bad_overview(bad_root, many_bad):
    """Messages of the Overview page of the many-bad run (one AppTest run: it computes the sweep)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ADE_RUNS_ROOT", str(bad_root))
    try:
        at = new_app(run=many_bad, page="overview")
        at.run()
        assert_no_exception(at, "many-bad on overview")
        msgs = messages(at) + [str(c.value) for c in at.get("caption")]
        print("\n[many-bad / overview] " + " | ".join(m[:200] for m in msgs))
        return msgs
    finally:
        mp.undo()


SIMPLE_APP_CASES = [
    ("no-manifest", "no-manifest"), ("garbage-manifest", "manifest.json"), ("future-format", "manifest.json"),
    ("truncated-model", "model.keras"), ("pickled-probes", "probes.npz"), ("empty", "model.keras"),
]


@pytest.mark.slow
@pytest.mark.parametrize("page", ["overview", "grid"])
@pytest.mark.parametrize("run_name,needle", SIMPLE_APP_CASES)
def test_app_pages_on_broken_runs(bad_root, monkeypatch, run_name, needle, page):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(bad_root))
    at = new_app(run=run_name, page=page)
    at.run()
    assert_no_exception(at, f"{run_name} on {page}")
    msgs = messages(at)
    print(f"\n[{run_name} / {page}] " + " | ".join(m[:160] for m in msgs))
    if run_name == "empty" and page == "grid":
        needle = "no checkpoint"  # nothing to extract: the sidebar says so
    assert _names(msgs, needle), f"no warning/error/info naming {needle!r}: {msgs}"
    assert not (bad_root / "PICKLE_RAN").exists()


@pytest.mark.slow
def test_app_overview_names_listing_level_damage(many_bad_overview, bad_root):
    msgs = many_bad_overview
    for me in LISTING_LEVEL:
        assert _names(msgs, MANY_BAD[me][1]), (me, msgs)
    assert _names(msgs, "history.csv")
    assert not (bad_root / "PICKLE_RAN").exists()


@pytest.mark.slow
def test_app_overview_names_unreadable_checkpoints(many_bad_overview):
    missing = [MANY_BAD[me][1] for me in SWEEP_LEVEL if not _names(many_bad_overview, MANY_BAD[me][1])]
    assert not missing, f"not named on the Overview: {missing}; shown: {many_bad_overview}"


@pytest.fixture(scope="module")
def many_bad_grid(bad_root, many_bad):
    """Scrub the Channel grid of many-bad through every checkpoint in ONE session: messages per mini-epoch."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ADE_RUNS_ROOT", str(bad_root))
    out = {}
    try:
        at = new_app(run=many_bad, page="grid", ckpt=0, layer="block3_conv1")
        at.run()
        for me in [0, 1, 2, 4, 6, 7, 0]:  # 3 and 5 are not offered (empty / missing file)
            slider = at.sidebar.select_slider[0]
            if me != slider.value:
                slider.set_value(me).run()
            assert_no_exception(at, f"many-bad grid at mini-epoch {me}")
            md = " ".join(str(m.value) for m in at.get("markdown"))
            out[me] = (messages(at), md, list(slider.options))
            print(f"\n[many-bad / grid @ {me}] " + " | ".join(m[:160] for m in out[me][0]))
        return out
    finally:
        mp.undo()


@pytest.mark.slow
def test_app_grid_scrubs_a_run_with_bad_checkpoints(many_bad_grid, bad_root):
    offered = [int(o) for o in many_bad_grid[0][2]]
    assert offered == [0, 1, 2, 4, 6, 7], offered  # empty and missing checkpoints are not offered
    for me, (msgs, md, _) in many_bad_grid.items():
        if me in MANY_BAD:
            assert _names(msgs, MANY_BAD[me][1]), (me, msgs)
        else:  # a good checkpoint right after bad ones still shows its values
            assert f"mini-epoch **{me}**" in md and "min " in md, (me, md)
            assert not [m for m in msgs if "could not be extracted" in m], (me, msgs)
    assert not (bad_root / "PICKLE_RAN").exists()


@pytest.mark.slow
def test_app_grid_names_listing_level_damage(many_bad_grid):
    msgs = many_bad_grid[7][0]
    missing = [f for f in (MANY_BAD[3][1], MANY_BAD[5][1], "history.csv") if not _names(msgs, f)]
    assert not missing, f"not named on the grid page: {missing}; shown: {msgs}"
