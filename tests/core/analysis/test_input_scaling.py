"""The ``input_scaling`` finding: raw 0-255 probes into a model trained on [0, 1] point at the input."""
from __future__ import annotations

from core.analysis.diagnose import Thresholds, diagnose
from core.analysis.sweep import SweepOptions, sweep
from core.run.preprocess import PreprocessSpec, set_run_preprocessing
from core.run.runs import Run
from tests.fixtures import copy_run

FAST = SweepOptions(train_mode=False, gradients=False)
WARM = Thresholds(bn_momentum=0.0)  # the tiny run is short: judge its BatchNorm statistics as settled


def _kinds(run: Run) -> dict[str, object]:
    res = sweep(run, options=FAST)
    return {f.kind: f for f in diagnose(res, run.history(), Run(run.path).manifest, thresholds=WARM)}


def test_wrong_scaling_is_found_and_named_as_the_input(tiny_run, tmp_path) -> None:
    assert tiny_run.manifest.preprocessing["kind"] == "scale01"
    assert "input_scaling" not in _kinds(tiny_run)
    run = copy_run(tiny_run.path, tmp_path / "raw")
    set_run_preprocessing(run.path, PreprocessSpec("none", source="guess"))
    found = _kinds(Run(run.path))
    f = found["input_scaling"]
    assert f.severity == "problem" and f.evidence["scaling_is_guess"]
    assert f.evidence["var_ratio"] > 100 and "pixel scaling" in f.message.lower()
    assert f.advice.remedy.startswith("set the run's pixel scaling")
