"""Channel grid page: one tile per channel of a layer for the probe image at the chosen checkpoint."""
from __future__ import annotations

import streamlit as st

from core import grids
from core.runs import RunError
from ui import cache, state, widgets

SCALES = {"layer": "per layer (this checkpoint)", "channel": "per channel",
          "fixed": "fixed (all checkpoints)"}
SORTS = {"index": "index", "std": "std (high first)", "mean": "mean (high first)"}
TILE_PX = {"small": 56, "medium": 88, "large": 128}
VIEW_PX = 280

st.title("Channel grid")
sel = state.sidebar("grid")
if sel is None or sel.ckpt is None or sel.image is None:
    st.stop()
eng = state.engine(sel.run)
if eng is None:
    st.stop()
state.start_extraction(sel)  # runs while the controls below are laid out
widgets.page_findings(sel, "grid")  # FINDINGS SPOT (only when the probe-set sweep is already done)

shapes = {t.name: tuple(int(d) for d in t.shape[1:] if d is not None) for t in eng.extractor.tappable}
kinds = eng.tap_kinds()


def _fmt(name: str) -> str:
    s = shapes.get(name, ())
    return f"{name}  ·  {'×'.join(map(str, s))}  ({kinds.get(name, '?')})"


c1, c2, c3, c4 = st.columns([2.2, 1.6, 1, 1])
layer = state.select_layer(eng.taps, where=c1, format_func=_fmt)
mode = c2.selectbox("Colour scale", list(SCALES), format_func=SCALES.get, **state.kept("grid_scale", "layer", SCALES),
                    help="Fixed uses the layer's min..max over every checkpoint for this image (computed "
                         "once): the mode that makes shrinking activations visible.")
cmap = c3.selectbox("Colormap", list(grids.COLORMAPS), **state.kept("grid_cmap", "viridis", grids.COLORMAPS),
                    help="coolwarm is diverging: white is exactly 0, the scale is symmetric.")
sort = c4.selectbox("Sort channels by", list(SORTS), format_func=SORTS.get, **state.kept("grid_sort", "index", SORTS))

try:
    maps, summary = cache.layer_maps(sel.path, cache.arch_mtime(sel.run), cache.ckpt_key(sel.ckpt), sel.image.key,
                                     layer, sel.trust, _image=sel.image.pixels)
except (RunError, ValueError, OSError) as e:
    st.error(f"Mini-epoch {sel.ckpt.mini_epoch} could not be extracted: {e}")
    st.stop()
n_ch, h, w = maps.shape

d1, d2, d3, d4 = st.columns([1.4, 1, 1, 1.6])
alpha = d1.slider("Overlay on the image", 0.0, 0.9, step=0.1, **state.kept("grid_alpha", 0.0),
                  help="Blend the probe image under every tile (0 = off).")
size = d2.selectbox("Tile size", list(TILE_PX), **state.kept("grid_tile", "medium", TILE_PX))
per_page = d3.selectbox("Tiles per page", [16, 32, 64, 128], **state.kept("grid_per_page", 64, [16, 32, 64, 128]))
pages = grids.n_pages(n_ch, per_page)
page = d4.number_input(f"Page (of {pages})", 1, pages, disabled=pages == 1,
                       **state.kept("grid_page", 1, range(1, pages + 1))) - 1

fixed = None
result = None
ikey = sel.image.key
if mode == "fixed":
    try:
        result = cache.swept(sel.run, sel.stamp, sel.trust, image_key=ikey, image=sel.image.pixels,
                             label="Fixed colour scale: this image at every checkpoint")
        rows = result.layers[result.layers["layer"].astype(str) == layer]
        fixed = grids.fixed_range(rows["min"], rows["max"])
    except RunError as e:
        st.warning(f"The fixed scale needs every checkpoint: {e}")
    if fixed is None:
        st.warning("No finite values of this layer over the checkpoints: using the per-layer scale.")
        mode = "layer"

marks = grids.channel_marks(summary)
ch_kw = state.kept("grid_channel", 0, range(n_ch))
sel_ch = st.session_state[ch_kw["key"]]
settings = (mode, cmap, fixed, sort, page, per_page, TILE_PX[size], alpha, sel_ch)
grid_png = cache.grid_png(sel.path, cache.ckpt_key(sel.ckpt), sel.image.key, layer, settings, _maps=maps,
                          _base=sel.image.pixels, _summary=summary)

n_nan, n_zero = marks.count("nonfinite"), marks.count("zero")
shape_txt = "×".join(map(str, shapes.get(layer, maps.shape)))
info = [f"**{layer}** {shape_txt}", f"mini-epoch **{sel.ckpt.mini_epoch}**", sel.image.label,
        f"{n_ch} channels" + (f" (page {page + 1} of {pages})" if pages > 1 else "")]
if n_zero:
    info.append(f"{n_zero} all-zero (grey border)")
if n_nan:
    info.append(f":red[{n_nan} with NaN/Inf (red border, magenta pixels)]")
st.markdown(" · ".join(info))
if n_nan:
    st.error(f"{n_nan} of {n_ch} channels of {layer} hold NaN or Inf at mini-epoch {sel.ckpt.mini_epoch}.")

lo, hi = cache.grid_scales(summary, settings)
bar = cache.colorbar_png(*cache.bar_args(settings, lo, hi))
st.image(bar, output_format="PNG",
         caption=SCALES[mode] + ("" if fixed is None else f": {grids.fmt(fixed[0])} .. {grids.fmt(fixed[1])}"))
st.image(grid_png, output_format="PNG")

st.subheader("One channel")
v1, v2 = st.columns([1, 2])
ch = v1.number_input("Channel", 0, max(n_ch - 1, 0), **ch_kw)
v1.markdown(f"min {grids.fmt(summary['min'][ch])} · max {grids.fmt(summary['max'][ch])}  \n"
            f"mean {grids.fmt(summary['mean'][ch])} · std {grids.fmt(summary['std'][ch])}"
            + (f"  \n:red[{int(summary['n_nonfinite'][ch])} NaN/Inf values]" if summary["n_nonfinite"][ch] else "")
            + ("  \nall zero" if summary["all_zero"][ch] else ""))
v1.image(cache.channel_view_png(sel.path, cache.ckpt_key(sel.ckpt), sel.image.key, layer, int(ch),
                                (float(lo[ch]), float(hi[ch]), cmap, VIEW_PX, alpha), _map=maps[ch],
                                _base=sel.image.pixels), output_format="PNG")

have = result is not None or cache.is_swept(sel.path, sel.stamp, ikey, sel.trust, "image")
with v2:
    if not have and not st.session_state.get(f"grid_traj:{ikey}"):
        st.caption("The trajectory of a channel over training needs this image at every checkpoint "
                   f"({len(sel.ckpts)} forward passes, cached in the run).")
        st.button("Compute the trajectory", key="grid_traj_btn", on_click=st.session_state.__setitem__,
                  args=(f"grid_traj:{ikey}", True))
    else:
        try:
            result = result or cache.swept(sel.run, sel.stamp, sel.trust, image_key=ikey, image=sel.image.pixels,
                                           label="This image at every checkpoint")
            hist, _ = cache.history(sel.path, cache.dir_stamp(sel.run.path))
            x = state.x_axis()

            def trajectory():
                from core.charts import channel_trajectory, with_x

                c = result.channels
                traj = c[(c["layer"].astype(str) == layer) & (c["channel"] == ch)][
                    ["mini_epoch", "min", "max", "mean", "std"]].assign(image=sel.image.label)
                traj = with_x(traj, x, hist, sel.run.manifest.mini_epoch_images)
                return channel_trajectory(traj, x=x, title=f"{layer} channel {ch} over training", width=520), traj

            widgets.chart("grid_traj", (sel.path, sel.stamp, ikey, layer, int(ch), x), trajectory)
        except RunError as e:
            st.warning(f"Trajectory unavailable: {e}")

# last, so the page is drawn first: the next checkpoint's activations and these images, in the background
state.read_ahead_next(sel, cache.GridView(layer, settings, int(ch), VIEW_PX))
