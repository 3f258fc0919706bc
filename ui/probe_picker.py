"""The sidebar's probe image: one of the run's probe set, a built-in photo, or an upload."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import streamlit as st

from core.run.runs import Run, RunError
from ui import cache, model_options
from ui.persist import keep, pending, pkey, seed, set_query, wkey

PHOTOS_DIR = Path(__file__).resolve().parents[1] / "data" / "photos"  # shipped with the app (licences there)
PHOTO_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SOURCES = {"probe": "Probe set", "photo": "Built-in photo", "upload": "Upload"}


@dataclass(frozen=True)
class ProbeImage:
    """The probe image chosen in the sidebar: ``pixels`` uint8 (H, W, C) at the model's input size.

    ``key`` identifies the content (cache key); ``probe_index`` is set for images of the run's probe set.
    """

    key: str
    label: str
    kind: str
    pixels: np.ndarray
    probe_index: int | None = None


def photos() -> list[Path]:
    """The built-in photos (data/photos in the repository), if that folder exists."""
    if not PHOTOS_DIR.is_dir():
        return []
    return sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix.lower() in PHOTO_EXTS)


def _on_upload() -> None:
    f = st.session_state.get(wkey("upload"))
    if f is None:
        st.session_state.pop(pkey("upload"), None)
    else:
        data = f.getvalue()
        st.session_state[pkey("upload")] = {"name": f.name, "data": data, "digest": cache.digest(data)}


def probe_label(i: int, y: np.ndarray, classes: Sequence[str]) -> str:
    lab = int(y[i]) if i < len(y) else -1
    name = classes[lab] if 0 <= lab < len(classes) else (str(lab) if lab >= 0 else "?")
    return f"#{i} · {name}"


def select_image(run: Run) -> ProbeImage | None:
    """Sidebar probe image: one of the run's probe set (default #0), a built-in photo, or an upload."""
    m = run.manifest
    size, channels = (m.input_height, m.input_width), m.input_channels
    try:
        x, y = cache.probe_set(str(run.path), cache.probes_mtime(run))
    except RunError as e:
        st.sidebar.warning(str(e))
        x, y = np.zeros((0, *m.input_shape), np.uint8), np.zeros((0,), np.int64)
    pics = photos()
    sources = [s for s in SOURCES if (s != "probe" or len(x)) and (s != "photo" or pics)]
    wanted = pending("source")
    if wanted in sources:
        st.session_state[pkey("source")] = wanted
    wanted_probe, wanted_photo = pending("probe"), pending("photo")
    if wanted_probe is not None and wanted_probe.isdigit() and int(wanted_probe) < len(x):
        st.session_state[pkey("probe")] = int(wanted_probe)
    if wanted_photo is not None and wanted_photo in [p.name for p in pics]:
        st.session_state[pkey("photo")] = wanted_photo
    src = st.session_state.get(pkey("source"), sources[0])
    seed("source", src if src in sources else sources[0])
    box = st.sidebar.container()
    src = box.radio("Probe image", sources, key=wkey("source"), on_change=keep, args=("source",),
                    format_func=SOURCES.get, horizontal=True)
    set_query("source", src)
    image: ProbeImage | None = None
    fit = model_options.fit_of(run)
    if src == "upload":
        limit = st.get_option("server.maxUploadSize")
        box.file_uploader(f"Image file (JPEG, PNG, WebP, BMP, GIF, TIFF…), up to {limit} MB", key=wkey("upload"),
                          on_change=_on_upload)
        up = st.session_state.get(pkey("upload"))
        if up is None:
            # the browser refuses a larger file itself: the app never sees it, so say the limit here
            box.caption(f"No image uploaded yet: showing probe image #0. Files over {limit} MB are refused "
                        "(`server.maxUploadSize` in .streamlit/config.toml).")
        else:
            px, err = cache.decode_image(f"upload:{up['digest']}", size, channels, up["data"], fit)
            if err:
                box.error(err)
                box.caption("Showing probe image #0 instead.")
            else:
                image = ProbeImage(f"upload:{up['digest']}{model_options.fit_suffix(fit)}", f"upload {up['name']}",
                                   "upload", px)
    elif src == "photo":
        names = [p.name for p in pics]
        cur = st.session_state.get(pkey("photo"))
        seed("photo", cur if cur in names else names[0])
        name = box.selectbox("Photo", names, key=wkey("photo"), on_change=keep, args=("photo",))
        set_query("photo", name)
        p = PHOTOS_DIR / name
        key = f"photo:{name}:{cache.mtime(p)}"
        px, err = cache.decode_image(key, size, channels, str(p), fit)
        if err:
            box.error(err)
        else:
            image = ProbeImage(f"photo:{name}{model_options.fit_suffix(fit)}", f"photo {name}", "photo", px)
    if image is None and len(x):
        idx = st.session_state.get(pkey("probe"), 0) if src == "probe" else 0
        idx = idx if isinstance(idx, int) and 0 <= idx < len(x) else 0
        if src == "probe":
            seed("probe", idx)
            idx = box.selectbox("Probe-set image", list(range(len(x))), key=wkey("probe"), on_change=keep,
                                args=("probe",), format_func=lambda i: probe_label(i, y, m.class_names))
        image = ProbeImage(f"probe:{idx:03d}", probe_label(idx, y, m.class_names), "probe", x[idx], idx)
        if src == "probe":
            set_query("probe", idx)
    if image is not None:
        box.image(cache.image_png(cache.digest(image.pixels.tobytes()), image.pixels), caption=image.label, width=96,
                  output_format="PNG")
    else:
        box.info("No probe image: this run has no probe set; upload an image.")
    return image

