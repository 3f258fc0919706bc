"""Views of one layer across every checkpoint: filmstrip (Channel grid), percentile bands (Dynamics),
SE excitation scale (SE gates). Each costs one forward pass per checkpoint at most and runs on request."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from ui import cache, state, widgets


def _progress(label: str):
    bar = st.progress(0.0, text=label)
    return bar, lambda done, total: bar.progress(done / max(total, 1), text=f"{label}: {done} / {total} checkpoints")


_MEMO: "OrderedDict[tuple, Any]" = OrderedDict()  # results by their inputs, newest last (a progress bar inside
_MEMO_LOCK = threading.Lock()                    # st.cache_data could not be replayed)
MEMO_ENTRIES = 32


def _memo(key: tuple, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per ``key`` in this process (the newest MEMO_ENTRIES kept)."""
    with _MEMO_LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return _MEMO[key]
    value = compute()
    with _MEMO_LOCK:
        _MEMO[key] = value
        while len(_MEMO) > MEMO_ENTRIES:
            _MEMO.popitem(last=False)
    return value


def _asked(key: str, label: str, help: str) -> bool:
    """An on-request view: a button the first time, then kept on for the session."""
    if st.session_state.get(key):
        return True
    st.button(label, key=f"{key}_btn", help=help, on_click=st.session_state.__setitem__, args=(key, True))
    return False


def filmstrip_view(sel: Any, eng: Any, layer: str, channel: int) -> None:
    """One row of tiles: ``channel`` of ``layer`` (or the layer's mean map) for the sidebar image at every
    checkpoint, on one colour scale fixed over all of them."""
    from core.analysis.trajectory import filmstrip
    from core.render.trajectory import filmstrip_image

    st.subheader("Filmstrip over training")
    if not _asked("traj_film", "Show the filmstrip", f"{len(sel.ckpts)} forward passes up to {layer}"):
        st.caption("One tile per checkpoint on one fixed colour scale: a shrinking channel fades, a dead one turns "
                   "flat.")
        return
    whole = st.toggle("Whole layer (mean over channels)", **state.kept("film_mean", False))
    ch = None if whole else int(channel)
    bar, prog = _progress(f"Filmstrip of {layer}")
    try:
        fs = _memo(("film", sel.path, sel.stamp, sel.image.key, layer, ch, sel.trust),
                   lambda: filmstrip(eng, sel.ckpts, sel.image.pixels, layer, ch, progress=prog))
    except (ValueError, OSError) as e:
        st.warning(f"The filmstrip could not be computed: {e}")
        return
    finally:
        bar.empty()
    labels = [f"me {m}" for m in fs.mini_epochs]
    widgets.png(filmstrip_image(fs.maps, fs.lo, fs.hi, labels),
                caption=f"{layer} {'mean map' if ch is None else f'channel {ch}'} · {sel.image.label} · fixed "
                        f"scale {fs.lo:.3g} .. {fs.hi:.3g} (viridis)")


def distributions_view(sel: Any, eng: Any, layer: str, probes: Sequence[int], labels: dict, hist: pd.DataFrame,
                       x: str) -> None:
    """TensorBoard-style distributions: percentile bands of ``layer`` per probe image over checkpoints, with the
    training loss on the same x axis (below, or on the same chart)."""
    from core.analysis.trajectory import distribution_frame
    from core.render.charts import with_x
    from core.render.trajectory import distribution_chart

    st.subheader(f"{layer}: distribution over training")
    if not _asked("traj_bands", "Show the distributions", f"{len(sel.ckpts)} forward passes up to {layer}"):
        st.caption("Percentile bands 0/7/16/50/84/93/100 % of every activation of the layer, per probe image.")
        return
    same = st.toggle("Loss on the same chart", **state.kept("bands_loss_same", False))
    x_all, _ = cache.probe_set(sel.path, cache.probes_mtime(sel.run))
    idx = list(probes) or [0]
    bar, prog = _progress(f"Distributions of {layer}")
    try:
        names = [labels[i] for i in idx]
        df = _memo(("bands", sel.path, sel.stamp, tuple(idx), layer, sel.trust),
                   lambda: distribution_frame(eng, sel.ckpts, x_all[idx], layer, probe_ids=names, progress=prog))
    except (ValueError, OSError) as e:
        st.warning(f"The distributions could not be computed: {e}")
        return
    finally:
        bar.empty()
    df = with_x(df.rename(columns={"probe": "image"}), x, hist, sel.run.manifest.mini_epoch_images)
    h = with_x(hist, x, hist, sel.run.manifest.mini_epoch_images) if hist is not None and len(hist) else None
    widgets.chart_with_export(distribution_chart(df, h, x=x, loss_on_chart=same), df, "dyn_bands")


def se_scale_view(sel: Any, eng: Any, res: Any, hist: pd.DataFrame, x: str) -> None:
    """Per SE block: scale of its input, gate and excited output over checkpoints, top-k share, near-1 term."""
    from core.analysis.trajectory import near_one_weight_of, se_scale
    from core.render.charts import with_x
    from core.render.trajectory import se_scale_chart

    st.subheader("Excitation scale")
    k = int(st.number_input("Top-k channels", 1, 64, **state.kept("se_topk", 3, range(1, 65))))
    w = near_one_weight_of(sel.run.manifest)
    df = se_scale(res, eng.se_blocks, k=k, near_one_weight=w)
    st.caption("Mean |a| of each block's input (the feature map the gate multiplies), its mean gate and its excited "
               "output (log scale), medians over the probe images; below, the share of the output's mean |a| "
               f"carried by its {k} largest channels (a few channels carrying everything is a sign of collapse).")
    df = with_x(df, x, hist, sel.run.manifest.mini_epoch_images)
    widgets.chart_with_export(se_scale_chart(df, x=x), df, "se_scale")
    if w:
        last = df.sort_values("mini_epoch").iloc[-1]
        st.caption(f"Near-1 gate regulariser: weight {w:g}; at mini-epoch {int(last['mini_epoch'])} its term "
                   f"{last['near_one_loss']:.3g} is {100 * last['near_one_share']:.1f} % of the probe loss with it.")
    else:
        st.caption("This run records no near-1 gate regulariser.")
