"""Demo runs: trained side by side (one here, one in a child process), complete, and not trained twice."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from core.run.runs import Run
from core.training import demo
from tests.fixtures import TINY_ARCH, TINY_TRAIN

TINY = dataclasses.replace(TINY_TRAIN, mini_epochs=1)


class _Bar:
    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def threads(monkeypatch) -> list[int]:
    """The thread limits asked for in this process (not applied: other tests share the runtime)."""
    asked: list[int] = []
    monkeypatch.setattr(demo, "_limit_threads", asked.append)
    return asked


def test_side_by_side_runs_complete_with_progress(tmp_path, threads):
    demos = {"here": TINY, "child": dataclasses.replace(TINY, arch=dataclasses.replace(TINY_ARCH, batchnorm=False))}
    bars: list[_Bar] = []
    made = demo.ensure_demo_runs(tmp_path, bar_factory=lambda t, d: bars.append(_Bar(t, d)) or bars[-1],
                                 demos=demos, side_by_side=True)
    assert made == ["here", "child"] and threads and threads[0] >= 1
    for name, cfg in demos.items():
        run = Run(tmp_path / name)
        assert run.complete_mini_epochs()[-1] == cfg.mini_epochs
        assert run.manifest.training == cfg.to_dict()
    assert [(b.desc, b.n, b.closed) for b in bars] == [(n, b.total, True) for n, b in zip(demos, bars)]
    assert demo.ensure_demo_runs(tmp_path, demos=demos, side_by_side=True) == []  # present: nothing to do


def test_a_failing_child_is_reported_with_its_output(tmp_path, threads, monkeypatch):
    def failing_child(run_dir, cfg, n):
        run_dir.mkdir(parents=True)
        (run_dir / demo.LOG).write_text("ValueError: no images in the data set\n")
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    monkeypatch.setattr(demo, "_start_child", failing_child)
    with pytest.raises(RuntimeError, match=r"demo run broken failed \(exit code 3\)(.|\n)*no images in the data set"):
        demo.ensure_demo_runs(tmp_path, demos={"here": TINY, "broken": TINY}, side_by_side=True)
