"""The x axes checkpoints are placed on: mini-epoch, or images seen during training."""
from __future__ import annotations

import pandas as pd

X_FIELDS = {"mini_epoch": "mini-epoch", "images_seen": "images seen"}


def x_map(history: pd.DataFrame | None, mini_epochs, mini_epoch_images: int = 0) -> pd.DataFrame:
    """mini_epoch -> images_seen for the given mini-epochs (history first; else mini_epoch * size; 0 at 0).

    Returns a frame with columns mini_epoch (int), images_seen (float).
    """
    me = pd.Series(sorted(set(int(m) for m in mini_epochs)), dtype="int64")
    seen = pd.Series(me * float(mini_epoch_images or 0), index=me.index, dtype="float64")
    if history is not None and len(history) and "images_seen" in history:
        h = history.dropna(subset=["images_seen"]).set_index("mini_epoch")["images_seen"]
        got = me.map(h)
        seen = got.where(got.notna(), seen if mini_epoch_images else got)
    seen[me == 0] = 0.0
    return pd.DataFrame({"mini_epoch": me, "images_seen": seen})
