"""Issue 17.10: TensorBoard logs from the command line (`export --format tensorboard`, `train --tensorboard`)."""
from __future__ import annotations

import shutil

from core.__main__ import main
from core.training.tensorboard import read_events


def test_export_format_tensorboard_writes_the_runs_statistics(runs_root, tmp_path, capsys):
    shutil.copytree(runs_root / "tiny", tmp_path / "runs" / "tiny")
    out = tmp_path / "tb"
    assert main(["export", "tiny", "--runs-root", str(tmp_path / "runs"), "--format", "tensorboard", "--fast",
                 "--out", str(out)]) == 0
    assert f"tensorboard --logdir {out}" in capsys.readouterr().out
    ev = read_events(out)
    assert sorted(ev[ev.tag.str.startswith("activation_std/stem_conv")]["step"].unique()) == [0, 1, 2, 3]
    assert (ev.plugin == "histograms").any()  # the SE gates' histograms


def test_train_tensorboard_logs_each_mini_epoch(tmp_path):
    out = tmp_path / "tb"
    assert main(["train", "t", "--runs-root", str(tmp_path / "runs"), "--tensorboard", str(out),
                 "--input-size", "32", "--num-classes", "3", "--widths", "4,4,4,4,4", "--convs", "1,1,1,1,1",
                 "--train-images", "64", "--val-images", "0", "--probe-images", "2", "--batch-size", "16",
                 "--mini-epoch-images", "32", "--mini-epochs", "2"]) == 0
    ev = read_events(out)
    assert sorted(ev[ev.tag == "train/loss"]["step"]) == [1, 2]
