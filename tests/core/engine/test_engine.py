"""core.engine.engine.RunEngine: one-tap extraction equals the full extraction and reads only what the tap needs."""
from __future__ import annotations

import numpy as np
import pytest

from core.engine.engine import RunEngine, run_probe_set


@pytest.fixture(scope="module")
def engine(tiny_run):
    return RunEngine(tiny_run)


def test_tap_activations_equal_the_full_extraction(engine, tiny_run):
    images = run_probe_set(tiny_run).images[:2]
    kinds = engine.tap_kinds()
    se = [next(t for t in engine.taps if kinds.get(t) == k) for k in ("se_logits", "se_gate", "se_excite")]
    picks = [engine.taps[0], engine.taps[len(engine.taps) // 2], engine.taps[-1], *se]
    ck = tiny_run.checkpoints()[-1]
    full = engine.activations(ck, images)
    for tap in picks:
        assert engine.tap_activations(ck, images, tap) is None  # not prepared yet
        engine.prepare_tap(tap)
        got = engine.tap_activations(ck, images, tap)
        assert got.shape == full[tap].shape
        np.testing.assert_allclose(got, full[tap], rtol=1e-5, atol=1e-6, err_msg=tap)


def test_first_tap_reads_only_its_weights(engine, tiny_run, monkeypatch):
    first = engine.taps[0]
    engine.prepare_tap(first)
    seen = []
    real = tiny_run.read_weights

    def spy(ckpt, architecture=None, names=None):
        out = real(ckpt, architecture=architecture, names=names)
        seen.append(set(out))
        return out

    monkeypatch.setattr(tiny_run, "read_weights", spy)
    engine.tap_activations(tiny_run.checkpoints()[0], run_probe_set(tiny_run).images[:1], first)
    n_all = len(tiny_run.read_weights(0))
    assert seen and 0 < len(seen[0]) <= 6 < n_all  # the stem's kernel (+ bias / BatchNorm), not the network


def test_tap_activations_report_a_checkpoint_of_another_architecture(engine, tiny_run, tmp_path):
    tap = engine.taps[0]
    engine.prepare_tap(tap)
    w = tiny_run.read_weights(0)
    name = next(k for k in sorted(w) if k.startswith(tap.split("/")[0]) and k.endswith("kernel"))
    w[name] = np.zeros((1, 1, 1, 1), np.float32)
    bad = tmp_path / "ckpt_000000.npz"
    np.savez(bad, **w)
    ck = tiny_run.checkpoints()[0]
    from dataclasses import replace

    with pytest.raises(ValueError, match="shape mismatch"):
        engine.tap_activations(replace(ck, path=bad), run_probe_set(tiny_run).images[:1], tap)


def test_tap_extractors_are_bounded(engine):
    for tap in engine.taps[: RunEngine.TAP_EXTRACTORS + 2]:
        engine.prepare_tap(tap)
    assert len(engine._tap_extractors) == RunEngine.TAP_EXTRACTORS
