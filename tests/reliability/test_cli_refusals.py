"""Every CLI refusal is one ``error:`` line with exit status 2 and no traceback (``--debug`` shows it);
cheap checks (a bad image, a bad run name, a damaged probe set) run before TensorFlow is imported."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import REPO, copy_tiny


def _set(d: Path, **fields) -> None:
    m = json.loads((d / "manifest.json").read_text())
    for k, v in fields.items():
        if k == "preprocessing":
            m["input"]["preprocessing"] = v
        else:
            m[k] = v
    (d / "manifest.json").write_text(json.dumps(m))


def _lambda_model(d: Path) -> None:
    import keras

    inp = keras.Input((24, 24, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    out = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(d / "model.keras")


def _corrupt_model(d: Path) -> None:
    p = d / "model.keras"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _linked_model(d: Path) -> None:
    outside = d.parent / f"{d.name}-outside.keras"
    shutil.copyfile(d / "model.keras", outside)
    (d / "model.keras").unlink()
    (d / "model.keras").symlink_to(outside)


def _bad_layer_name(d: Path) -> None:
    """A model whose config names a layer with '/', which Keras refuses to build."""
    p = d / "model.keras"
    with zipfile.ZipFile(p) as z:
        files = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(files["config.json"])
    first = cfg["config"]["layers"][1]
    old = first["name"]
    text = json.dumps(cfg).replace(f'"{old}"', f'"{old}/x"')
    files["config.json"] = text.encode()
    with zipfile.ZipFile(p, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


CASES = {
    "lambda-model": (_lambda_model, "Lambda"),
    "corrupt-model": (_corrupt_model, "model.keras"),
    "linked-model": (_linked_model, "model.keras"),
    "architecture-etc-passwd": (lambda d: _set(d, architecture_file="/etc/passwd"), "architecture_file"),
    "unreadable-probes": (lambda d: (d / "probes.npz").write_bytes(b"PK\x03\x04garbage"), "probes.npz"),
    "unknown-preprocessing": (lambda d: _set(d, preprocessing={"kind": "imagenet-magic"}), "preprocessing"),
    "bad-layer-name": (_bad_layer_name, "model.keras"),
}


@pytest.fixture(scope="module")
def refusal_root(tmp_path_factory, tiny_run) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    for name, (damage, _) in CASES.items():
        damage(copy_tiny(tiny_run.path, root / name))
    return root


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", list(CASES))
def test_refusal_is_one_error_line_with_status_2(refusal_root, case, capsys):
    from core.__main__ import main

    rc = main(["sweep", case, "--runs-root", str(refusal_root), "--fast"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert CASES[case][1] in lines[0], lines[0]


def test_debug_shows_the_traceback(refusal_root, capsys):
    from core.__main__ import main

    rc = main(["--debug", "sweep", "unreadable-probes", "--runs-root", str(refusal_root)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and len(_error_lines(err)) == 1


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom core.__main__ import main\nrc = main(sys.argv[1:])\n"
            "print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'NO-TF')\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=str(REPO),
                          timeout=300)


def test_bad_image_is_refused_before_tensorflow(tmp_path, tiny_run):
    root = tmp_path / "runs"
    copy_tiny(tiny_run.path, root / "r")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    p = _run_cli("sweep", "r", "--runs-root", str(root), "--probe", str(bad))
    assert p.returncode == 2 and len(_error_lines(p.stderr)) == 1 and "bad.png" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and p.stdout.strip().endswith("NO-TF")


def test_damaged_probe_set_is_refused_before_tensorflow(tmp_path, tiny_run):
    root = tmp_path / "runs"
    d = copy_tiny(tiny_run.path, root / "r")
    np.savez(d / "probes.npz", x=np.zeros((2, 5, 5, 3), np.uint8), y=np.zeros(2, np.int64))
    p = _run_cli("sweep", "r", "--runs-root", str(root))
    assert p.returncode == 2 and "probes.npz" in p.stderr and p.stdout.strip().endswith("NO-TF"), p.stderr


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil", "a/b", ".hidden", "..", "x" * 200])
def test_train_takes_only_run_names(tmp_path, name):
    root = tmp_path / "runs"
    root.mkdir()
    p = _run_cli("train", name, "--runs-root", str(root), "--mini-epochs", "1")
    assert p.returncode == 2 and len(_error_lines(p.stderr)) == 1 and "not a valid run name" in p.stderr, p.stderr
    assert p.stdout.strip().endswith("NO-TF")
    assert list(root.iterdir()) == [] and not (tmp_path.parent / "evil").exists()
