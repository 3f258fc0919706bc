"""Resume never deletes or overwrites what it cannot read; ``repair`` rebuilds the damaged file, then resume works.

Each case damages a copy of the tiny fixture run (checkpoints 0..3, history rows 1..3), runs
``python -m core train NAME --resume --mini-epochs 4`` in-process and checks: exit status 2, one
``error:`` line naming the damaged file and the repair command, and every file byte-identical.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.conftest import copy_tiny

HEADER = "mini_epoch,images_seen,wall_time,loss,accuracy,val_loss,val_accuracy,lr"


def _garbage_manifest(d: Path) -> None:
    (d / "manifest.json").write_bytes(b'{"format": "activation-dynamics-run", "format_vers\x00\xff')


def _no_history(d: Path) -> None:
    (d / "history.csv").unlink()


def _broken_header(d: Path) -> None:
    p = d / "history.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(["mini_epohc,images,,", *lines[1:]]) + "\n")


def _rows_malformed(d: Path) -> None:
    p = d / "history.csv"
    n = len(p.read_text().splitlines()) - 1
    p.write_text(HEADER + "\n" + "".join("x,y,z\n" for _ in range(n)))


def _fractional_mini_epoch(d: Path) -> None:
    p = d / "history.csv"
    lines = p.read_text().splitlines()
    lines[3] = "3.7" + lines[3][lines[3].index(","):]  # row of mini-epoch 3 -> 3.7 (must not become 3)
    p.write_text("\n".join(lines) + "\n")


CASES = {"garbage-manifest": (_garbage_manifest, "manifest.json"),
         "no-history": (_no_history, "history.csv"),
         "broken-header": (_broken_header, "history.csv"),
         "rows-malformed": (_rows_malformed, "history.csv"),
         "fractional-mini-epoch": (_fractional_mini_epoch, "history.csv")}


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (links as their target text) by relative path."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = Path(root) / n
            rel = str(p.relative_to(d))
            if p.is_symlink():
                out[rel] = b"->" + os.readlink(p).encode()
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = b"<dir>"
    return out


def _main(*argv: str) -> int:
    from core.__main__ import main

    return main(list(argv))


def _resume(root: Path, name: str, *extra: str) -> int:
    return _main("train", name, "--runs-root", str(root), "--resume", "--mini-epochs", "4", *extra)


@pytest.fixture
def damaged(tmp_path, tiny_run):
    def make(case: str) -> Path:
        d = copy_tiny(tiny_run.path, tmp_path / case)
        CASES[case][0](d)
        return d

    return make


@pytest.mark.parametrize("case", list(CASES))
def test_resume_refuses_and_keeps_every_byte(damaged, case, capsys):
    d = damaged(case)
    before = snapshot(d)
    rc = _resume(d.parent, d.name)
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert CASES[case][1] in errors[0] and "python -m core repair" in errors[0], errors[0]
    assert snapshot(d) == before


@pytest.mark.parametrize("case", ["garbage-manifest", "no-history", "rows-malformed"])
def test_repair_then_resume_continues_the_run(damaged, case, capsys):
    from core.run.runs import Run

    d = damaged(case)
    kept = {k: v for k, v in snapshot(d).items() if k.startswith("checkpoints/ckpt_")}
    assert _main("repair", str(d), "--dry-run") == 0
    assert "nothing to repair" not in capsys.readouterr().out
    assert snapshot(d)["checkpoints/ckpt_000003.npz"] == kept["checkpoints/ckpt_000003.npz"]
    assert _main("repair", str(d)) == 0
    out = capsys.readouterr()
    damaged_file = CASES[case][1]
    if case != "no-history":  # the damaged original is kept beside the rebuilt file
        assert any(p.name.startswith(damaged_file + ".damaged-") for p in d.iterdir()), out.err
    run = Run(d)
    assert run.manifest.input_shape == (24, 24, 3)
    assert run.complete_mini_epochs() == [0, 1, 2, 3]
    assert _resume(d.parent, d.name) == 0, capsys.readouterr().err
    run = Run(d)
    assert [c.mini_epoch for c in run.checkpoints()] == [0, 1, 2, 3, 4]
    after = snapshot(d)
    assert all(after[k] == v for k, v in kept.items())  # the old checkpoints are untouched


def test_repair_of_an_intact_run_writes_nothing(tmp_path, tiny_run, capsys):
    d = copy_tiny(tiny_run.path, tmp_path / "intact")
    before = snapshot(d)
    assert _main("repair", str(d)) == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert snapshot(d) == before
