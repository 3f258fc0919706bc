"""Hostile files and requests: code in model files never runs without the trust opt-in, no pickle is
ever read, paths cannot leave the runs root, the server is local-only with an upload limit.
"""
from __future__ import annotations

import ast
import io
import json
import os
import shutil
import tomllib
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, assert_no_exception, copy_tiny, messages, new_app

SHARED = REPO.parent / "shared" / "testdata"
LEGACY_H5 = SHARED / "legacy-keras2" / "keras_mnist_model.h5"


# ---- code in model files -------------------------------------------------------------------------


def _lambda_model(marker: Path):
    """A small model whose Lambda layer creates ``marker`` whenever its function is called
    (building the functional graph on load calls it)."""
    import keras

    fn = eval(f"lambda t: (open({str(marker)!r}, 'a').close(), t)[1]")  # noqa: S307 - the test's own code
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.Lambda(fn, name="evil")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="classifier")(x))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_run):
    """A runs root with ``lambda-run`` (the tiny run's manifest and probes, a Lambda architecture whose
    code drops a marker file), and loose hostile model files."""
    from core.run.runs import RunWriter, model_weights

    d = tmp_path_factory.mktemp("hostile")
    marker = d / "LAMBDA_RAN"
    model = _lambda_model(marker)
    root = d / "runs"
    run = copy_tiny(tiny_run.path, root / "lambda-run")
    shutil.rmtree(run / "checkpoints")
    (run / "history.csv").unlink()
    model.save(run / "model.keras")
    RunWriter(run).write_checkpoint(0, model_weights(model))
    copy_tiny(tiny_run.path, root / "tiny")
    marker.unlink(missing_ok=True)  # building and saving called the function once
    return {"dir": d, "root": root, "marker": marker, "model": run / "model.keras",
            "files": _injected_configs(d, marker)}


def _injected_configs(d: Path, marker: Path) -> dict[str, Path]:
    """.keras archives whose config.json names non-Keras callables (config-injection attempts)."""
    import keras

    inp = keras.Input((4,))
    plain = d / "plain.keras"
    keras.Model(inp, keras.layers.Dense(2, name="d")(inp)).save(plain)

    def dense(cfg):
        return next(layer for layer in cfg["config"]["layers"] if layer["class_name"] == "Dense")

    def popen(cfg):
        layer = dense(cfg)
        layer.update(module="subprocess", class_name="Popen", registered_name=None,
                     config={"args": ["touch", str(marker)]})

    def path_touch(cfg):
        dense(cfg)["config"]["kernel_initializer"] = {"module": "pathlib", "class_name": "Path",
                                                      "config": {"touch": str(marker)}, "registered_name": None}

    def exec_activation(cfg):
        dense(cfg)["config"]["activation"] = {"module": "builtins", "class_name": "function", "config": "exec",
                                              "registered_name": "exec"}

    out = {}
    for name, edit in (("popen", popen), ("path_touch", path_touch), ("exec_activation", exec_activation)):
        buf = io.BytesIO()
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(buf, "w") as z:
            for n in src.namelist():
                data = src.read(n)
                if n == "config.json":
                    cfg = json.loads(data)
                    edit(cfg)
                    data = json.dumps(cfg).encode()
                z.writestr(n, data)
        out[name] = d / f"inject_{name}.keras"
        out[name].write_bytes(buf.getvalue())
    return out


def test_lambda_model_never_runs_without_trust_core(hostile):
    from core.engine.engine import RunEngine
    from core.run.loading import UnsafeModelError, load_model_file
    from core.run.runs import Run, list_runs, open_run

    marker = hostile["marker"]
    assert not marker.exists()
    with pytest.raises(UnsafeModelError) as ei:
        load_model_file(hostile["model"])
    msg = str(ei.value)
    assert "evil" in msg and "Lambda" in msg and "trust" in msg.lower() and "model.keras" in msg, msg
    assert not marker.exists(), "the Lambda ran although the load was refused"
    infos = {i.name: i for i in list_runs(hostile["root"])}
    assert infos["lambda-run"].error is None and infos["lambda-run"].n_checkpoints == 1
    run = open_run(hostile["root"], "lambda-run")
    run.read_weights(0)  # npz arrays: no code
    with pytest.raises(UnsafeModelError):
        run.load_model()
    with pytest.raises(UnsafeModelError):
        RunEngine(Run(run.path))
    assert not marker.exists(), "listing / opening / reading the run ran the Lambda"
    # control: the marker does work, and only the explicit opt-in runs the code
    load_model_file(hostile["model"], trust=True)
    assert marker.exists(), "control failed: the trusted load did not call the Lambda"
    marker.unlink()


def test_injected_initializer_is_dropped_never_built(hostile):
    """An initializer naming a non-Keras class (pathlib.Path) does not change the forward pass: it is left
    out of the config before anything is deserialised (so it is never constructed) and reported."""
    from core.run.loading import load_model_noted

    loaded = load_model_noted(hostile["files"]["path_touch"])
    assert any("kernel_initializer" in d and "Path" in d for d in loaded.dropped), loaded.dropped
    assert not hostile["marker"].exists(), "path_touch: code ran"


@pytest.mark.parametrize("kind", ["popen", "exec_activation"])
def test_config_injection_is_refused(hostile, kind):
    """Configs naming non-Keras modules (subprocess.Popen, pathlib.Path, builtins.exec) are refused in safe mode."""
    from core.run.loading import ModelLoadError, load_model_file

    with pytest.raises(ModelLoadError) as ei:
        load_model_file(hostile["files"][kind])
    assert hostile["files"][kind].name in str(ei.value)
    assert not hostile["marker"].exists(), f"{kind}: code ran"


def test_savedmodel_layer_is_refused_without_trust(tmp_path):
    """A TFSMLayer wraps a SavedModel graph, which can read and write files (here: tf.io.write_file)."""
    import keras
    import tensorflow as tf

    from core.run.loading import UnsafeModelError, load_model_file

    marker = tmp_path / "GRAPH_RAN"

    class Mod(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "ran")
            return x * 2.0

    mod = Mod()
    tf.saved_model.save(mod, str(tmp_path / "sm"), signatures={"serving_default": mod.serve})
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.TFSMLayer(str(tmp_path / "sm"), call_endpoint="serving_default")(inp)).save(
        tmp_path / "tfsm.keras")
    marker.unlink(missing_ok=True)
    with pytest.raises(UnsafeModelError, match="TFSMLayer"):
        load_model_file(tmp_path / "tfsm.keras")
    assert not marker.exists()


def test_legacy_keras2_lambdas_refused_with_explanation():
    from core.run.loading import UnsafeModelError, load_model_file

    if not LEGACY_H5.exists():
        pytest.skip(f"shared test data not found at {LEGACY_H5}")
    with pytest.raises(UnsafeModelError) as ei:
        load_model_file(LEGACY_H5)
    assert "Lambda" in str(ei.value) and "trust" in str(ei.value).lower()


@pytest.mark.slow
def test_lambda_model_never_runs_in_the_app_without_opt_in(hostile, monkeypatch):
    """List and open the Lambda run on the Overview and the Channel grid: refused with the opt-in
    offered, marker absent; ticking "I trust this file" runs it (control); another session that
    did not opt in is still refused."""
    marker = hostile["marker"]
    marker.unlink(missing_ok=True)
    monkeypatch.setenv("ADE_RUNS_ROOT", str(hostile["root"]))
    for page in ("overview", "grid"):
        at = new_app(run="lambda-run", page=page)
        at.run()
        assert_no_exception(at, f"lambda-run on {page}")
        text = " ".join(messages(at))
        assert "Lambda" in text and "trust" in text.lower(), text
        assert not marker.exists(), f"the {page} page ran the Lambda without the opt-in"
    box = [c for c in at.sidebar.checkbox if c.label == "I trust this file"]
    assert box, "no trust opt-in offered"
    box[0].check().run()
    assert marker.exists(), "control: ticking 'I trust this file' should load (and run) the model"
    marker.unlink()
    other = new_app(run="lambda-run", page="grid")
    other.run()
    assert_no_exception(other, "second session")
    assert not marker.exists(), "one session's opt-in leaked into another session"


# ---- no pickle anywhere ------------------------------------------------------------------------------

SCANNED = ["core", "ui", "pages", "app.py", "explorer.py", "bench"]
FORBIDDEN_CALLS = {  # call (as written) -> why
    "pickle.load": "pickle", "pickle.loads": "pickle", "pickle.Unpickler": "pickle", "cPickle.load": "pickle",
    "dill.load": "pickle", "dill.loads": "pickle", "cloudpickle.load": "pickle", "cloudpickle.loads": "pickle",
    "joblib.load": "pickle", "torch.load": "pickle", "pd.read_pickle": "pickle", "pandas.read_pickle": "pickle",
    "shelve.open": "pickle", "marshal.load": "code objects", "marshal.loads": "code objects",
    "keras.config.enable_unsafe_deserialization": "turns safe mode off for the whole process",
    "eval": "code execution", "exec": "code execution",
}


def _py_files() -> list[Path]:
    out = []
    for s in SCANNED:
        p = REPO / s
        out += [p] if p.is_file() else sorted(p.rglob("*.py")) if p.is_dir() else []
    return out


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_pickle_or_unsafe_deserialisation_in_the_source():
    files = _py_files()
    assert len(files) > 10
    bad = []
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                for n in names:
                    if n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"):
                        bad.append(f"{f.relative_to(REPO)}:{node.lineno}: imports {n}")
            if not isinstance(node, ast.Call):
                continue
            fn = ast.unparse(node.func)
            where = f"{f.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:100]}"
            if fn in FORBIDDEN_CALLS:
                bad.append(f"{where} ({FORBIDDEN_CALLS[fn]})")
            if fn in ("np.load", "numpy.load"):
                v = _kw(node, "allow_pickle")
                if not (isinstance(v, ast.Constant) and v.value is False):
                    bad.append(f"{where} (np.load without allow_pickle=False)")
            v = _kw(node, "allow_pickle")
            if isinstance(v, ast.Constant) and v.value is True:
                bad.append(f"{where} (allow_pickle=True)")
            v = _kw(node, "safe_mode")
            if v is not None and not (isinstance(v, ast.Constant) and v.value is True) and \
                    ast.unparse(v) != "not trust":
                bad.append(f"{where} (safe_mode must be True or `not trust`)")
            if fn.endswith("cache_data") and _kw(node, "persist") is not None:
                bad.append(f"{where} (persisted st.cache_data pickles to disk)")
            if fn in ("yaml.load", "yaml.load_all") and "SafeLoader" not in ast.unparse(node):
                bad.append(f"{where} (yaml.load without SafeLoader)")
    assert not bad, "unsafe deserialisation in the source:\n" + "\n".join(bad)


def test_pyarrow_is_not_the_pickle_vulnerable_version():
    """Parquet caches inside a run are read with pyarrow; < 14.0.1 unpickled extension types (CVE-2023-47248)."""
    import pyarrow

    assert tuple(int(p) for p in pyarrow.__version__.split(".")[:3]) >= (14, 0, 1), pyarrow.__version__


# ---- path traversal ----------------------------------------------------------------------------------

TRAVERSALS = ["../../etc", "..", ".", "../tiny", "tiny/../../etc", "/etc", "/etc/passwd", "/", "a/b", "a\\b",
              "..\\..\\windows", "%2e%2e%2f%2e%2e%2fetc", "..%2f..%2fetc", "%2e%2e", "%252e%252e%252f", "~",
              "~root", "C:\\Windows", "tiny/", "tiny\x00", "tiny\n", ".hidden", "", " ", "\u2025", "．．／etc",
              "tiny/checkpoints", "x" * 300]


def _variants() -> list[str]:
    out = []
    for t in TRAVERSALS:
        for v in (t, urllib.parse.unquote(t), urllib.parse.unquote(urllib.parse.unquote(t))):
            if v not in out:
                out.append(v)
    return out


@pytest.fixture(scope="module")
def trav_root(tmp_path_factory, tiny_run):
    """A runs root with ``tiny``, an outside run, and symlinks from inside to outside."""
    d = tmp_path_factory.mktemp("trav")
    root, outside = d / "runs", d / "outside"
    copy_tiny(tiny_run.path, root / "tiny")
    copy_tiny(tiny_run.path, outside / "secret-run")
    os.symlink(outside / "secret-run", root / "escape")  # a symlinked run leaving the root
    os.symlink(Path("..") / "outside" / "secret-run", root / "escape-rel")
    os.symlink(root / "tiny", root / "alias")  # a symlink that stays inside: allowed
    return root


@pytest.mark.parametrize("name", _variants())
def test_resolve_run_path_refuses_traversal(trav_root, name):
    from core.run.runs import RunError, open_run, resolve_run_path

    try:
        p = resolve_run_path(trav_root, name)
    except RunError:
        return
    assert p.parent == trav_root.resolve(), (name, p)  # accepted only as a plain name inside the root
    with pytest.raises(RunError):
        open_run(trav_root, name)  # and then it is not a run


def test_symlinks_cannot_leave_the_root(trav_root):
    from core.run.runs import RunError, list_runs, open_run

    for name in ("escape", "escape-rel"):
        with pytest.raises(RunError, match="outside the runs root"):
            open_run(trav_root, name)
    assert open_run(trav_root, "alias").path == (trav_root / "tiny").resolve()
    infos = {i.name: i for i in list_runs(trav_root)}
    for name in ("escape", "escape-rel"):  # listed (so the user sees why) but refused, nothing read outside
        assert infos[name].error and "outside the runs root" in infos[name].error, infos[name]
        assert infos[name].n_checkpoints == 0
    assert infos["tiny"].error is None and infos["alias"].error is None


APP_TRAVERSALS = ["../../etc", "/etc", "..", "%2e%2e%2f%2e%2e%2fetc", "../../etc".replace("/", "%2f"),
                  "escape", "tiny/../../outside/secret-run"]


@pytest.mark.slow
@pytest.mark.parametrize("name", APP_TRAVERSALS)
def test_app_run_query_param_cannot_leave_the_root(trav_root, monkeypatch, name):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(trav_root))
    at = new_app(page="grid", run=name)
    at.run()
    assert_no_exception(at, f"?run={name}")
    chosen = at.sidebar.selectbox[0].value
    assert (trav_root / chosen).resolve().parent == trav_root.resolve() or name == "escape", chosen
    shown = " ".join(messages(at))
    assert "secret-run" not in chosen and "etc" not in chosen
    if name == "escape":  # the symlinked run is listed: opening it is refused with a message
        assert "outside the runs root" in shown, shown
    else:
        assert name in shown or "not under the runs root" in shown, shown
    assert at.query_params.get("run") in (chosen,), at.query_params


PAGE_PARAMS = ["../app", "../tests/conftest",
               "../../../../etc/passwd", "grid/../../app", "/etc/passwd", "..%2fapp", "__init__", "nope"]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGE_PARAMS)
def test_app_page_query_param_cannot_leave_the_pages(trav_root, monkeypatch, page):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(trav_root))
    at = new_app(page=page, run="tiny")
    at.run()
    assert_no_exception(at, f"?page={page}")


@pytest.mark.slow
def test_app_other_query_params_are_inert(trav_root, monkeypatch):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(trav_root))
    at = new_app(page="grid", run="tiny", ckpt="../../etc/passwd", layer="<script>alert(1)</script>")
    at.run()
    assert_no_exception(at, "odd ckpt / layer")
    shown = " ".join(messages(at))
    assert "does not exist in this run" in shown and "not a layer of this run" in shown, shown


# ---- server configuration ----------------------------------------------------------------------


def test_server_binds_to_localhost_with_upload_limit_and_xsrf():
    from core.run.images import DEFAULT_MAX_BYTES

    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server, browser, client = cfg.get("server", {}), cfg.get("browser", {}), cfg.get("client", {})
    assert server.get("address") in ("127.0.0.1", "localhost", "::1"), server
    assert isinstance(server.get("maxUploadSize"), int) and 1 <= server["maxUploadSize"] <= 200, server
    assert server["maxUploadSize"] * 2**20 <= DEFAULT_MAX_BYTES  # the server refuses first
    assert server.get("enableXsrfProtection", True) is True
    assert server.get("enableCORS", True) is True
    assert server.get("enableStaticServing", False) is False
    assert server.get("runOnSave", False) is False
    assert browser.get("gatherUsageStats") is False  # no outside requests from the page
    assert client.get("showErrorDetails", "full") in ("none", "type", False), client  # no tracebacks to visitors
    assert not (REPO / ".streamlit" / "secrets.toml").exists()


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a socket in LISTEN state on ``port``."""
    out = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, p = parts[1].rsplit(":", 1)
            if int(p, 16) == port and parts[3] == "0A":
                out.append(addr)
    return out


@pytest.mark.slow
def test_real_server_started_elsewhere_listens_on_loopback_only(tmp_path):
    """``streamlit run /path/to/app.py`` from another directory still binds 127.0.0.1 (Streamlit reads the
    .streamlit/config.toml next to the main script)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port",
                             str(port), "--server.headless", "true"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t_end = time.monotonic() + 60
        addrs: list[str] = []
        while time.monotonic() < t_end and not addrs and proc.poll() is None:
            time.sleep(0.2)
            addrs = _listening(port)
        assert addrs, f"the server did not listen on {port}"
        time.sleep(0.5)
        addrs = _listening(port)
        loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
        assert set(addrs) <= loopback, f"listening on {addrs} (hex), not only on 127.0.0.1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
