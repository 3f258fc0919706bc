"""Writing a run directory (the trainer and the recorder callback): every write is atomic, nothing unread is lost."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.run.atomic import atomic_save_npz, atomic_write_json, atomic_write_text
from core.run.schema import (ARCHITECTURE, CHECKPOINT_DIR, HISTORY, HISTORY_COLUMNS, MANIFEST, PROBES, RunError,
                             format_history, repair_hint)


def checkpoint_filename(mini_epoch: int) -> str:
    return f"ckpt_{mini_epoch:06d}.npz"


class RunWriter:
    """Writes a run directory (used by the trainer and the recorder callback); every write is atomic."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _run(self):
        from core.run.runs import Run

        return Run(self.path)

    def create(self, manifest: Mapping[str, Any], model=None, probes: tuple[np.ndarray, np.ndarray] | None = None,
               overwrite: bool = False) -> None:
        if (self.path / MANIFEST).exists() and not overwrite:
            raise RunError(self.path, "a run already exists here; pick another name or resume it")
        run = self._run()
        (self.path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        if model is not None:
            target = run.file(ARCHITECTURE)
            tmp = self.path / f".{ARCHITECTURE}.tmp.keras"
            model.save(tmp)
            os.replace(tmp, target)
        if probes is not None:
            x, y = probes
            atomic_save_npz(run.file(PROBES), {"x": np.asarray(x, np.uint8), "y": np.asarray(y, np.int64)})
        atomic_write_json(run.file(MANIFEST), dict(manifest))

    def write_checkpoint(self, mini_epoch: int, weights: Mapping[str, np.ndarray]) -> Path:
        p = self._run().file(Path(CHECKPOINT_DIR) / checkpoint_filename(mini_epoch))
        atomic_save_npz(p, weights)
        return p

    def write_history(self, df: pd.DataFrame) -> None:
        atomic_write_text(self._run().file(HISTORY), format_history(df))

    def append_history(self, row: Mapping[str, Any]) -> pd.DataFrame:
        """Add (or replace) the row for ``row['mini_epoch']`` and rewrite the file atomically.

        Refuses (RunError) when the file has rows it cannot read: rewriting would drop them.
        """
        df, problems = self._run().history_strict()
        _refuse_if_damaged(self.path, problems)
        df = df[df["mini_epoch"] != int(row["mini_epoch"])]
        new = pd.DataFrame([{k: row.get(k, math.nan) for k in dict.fromkeys([*HISTORY_COLUMNS, *row])}])
        df = pd.concat([df, new], ignore_index=True) if len(df) else new
        df["mini_epoch"] = df["mini_epoch"].astype("int64")
        df = df.sort_values("mini_epoch").reset_index(drop=True)
        self.write_history(df)
        return df

    def truncate_after(self, mini_epoch: int) -> None:
        """Drop checkpoints and history rows after ``mini_epoch`` (used by resume).

        Refuses (RunError naming the file and how to repair it) rather than discard what it
        cannot account for: a history with damaged rows, or more than the one checkpoint without
        a history row that a kill between writing a checkpoint and its row can leave behind.
        """
        run = self._run()
        df, problems = run.history_strict()
        _refuse_if_damaged(self.path, problems)
        later = [c for c in run.checkpoints() if c.mini_epoch > mini_epoch]
        rows = set(df["mini_epoch"].tolist())
        unaccounted = [c.mini_epoch for c in later if c.mini_epoch not in rows]
        if len(unaccounted) > 1:
            hist = run.file(HISTORY)
            why = "is missing" if not hist.exists() else "has no rows for them"
            raise RunError(hist, f"{why}, so resuming would delete checkpoints "
                                 f"{', '.join(map(str, unaccounted))}; nothing was changed. " + repair_hint(self.path))
        if (df["mini_epoch"] > mini_epoch).any():
            self.write_history(df[df["mini_epoch"] <= mini_epoch])
        for c in later:
            c.path.unlink(missing_ok=True)


def _refuse_if_damaged(run_dir: Path, problems: list[str]) -> None:
    if problems:
        raise RunError(run_dir / HISTORY, f"has rows that cannot be read ({problems[0]}"
                                          + (f"; +{len(problems) - 1} more" if len(problems) > 1 else "")
                                          + "); rewriting it would lose them, so nothing was changed. "
                                          + repair_hint(run_dir))
