"""Bad probe images: refused with a clear ImageError or loaded correctly; the engine and the app survive each.

Corpus: tests/badimages.py plus tests/reliability/hostile_images.py (bombs in JPEG/GIF, text bombs,
lying extensions, EXIF orientations, 16-bit RGBA...). Run with ``-s`` for the summary tables.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

from tests.reliability.conftest import assert_no_exception, new_app, table, texts
from tests.reliability.hostile_images import full_corpus, mime_of

CORPUS = full_corpus()
SIZE = 24  # the tiny fixture run's input size

RED, BLUE, GREEN, GREY = (255, 0, 0), (0, 0, 255), (0, 255, 0), (128, 128, 128)


def _near(px, colour, tol=40) -> bool:
    return bool(np.all(np.abs(np.asarray(px, int) - np.asarray(colour)) <= tol))


def _check_content(name: str, a: np.ndarray) -> None:
    """What the image must look like when it loaded (beyond dtype and shape)."""
    top, bottom, left, right = a[1, SIZE // 2], a[-2, SIZE // 2], a[SIZE // 2, 1], a[SIZE // 2, -2]
    if name == "one_pixel.png":
        assert (a == (10, 200, 30)).all()
    elif name == "exif_rot6.jpg":  # upright: red on top, blue below
        assert _near(top, RED) and _near(bottom, BLUE), (top, bottom)
    elif name == "exif_rot8.jpg":  # the other quarter turn: blue on top
        assert _near(top, BLUE) and _near(bottom, RED), (top, bottom)
    elif name == "exif_rot3.jpg":  # half turn: stored left red becomes right
        assert _near(left, BLUE) and _near(right, RED), (left, right)
    elif name == "exif_orientation_99.jpg":  # invalid tag: left as stored
        assert _near(left, RED) and _near(right, BLUE), (left, right)
    elif name == "animated.gif":  # first frame
        assert _near(a.reshape(-1, 3).mean(0), RED, 10)
    elif name == "multipage.tiff":  # first page
        assert _near(a.reshape(-1, 3).mean(0), BLUE, 10)
    elif name == "palette_transparent.png":  # transparent border over grey, opaque green square
        assert _near(a[0, 0], GREY, 5) and _near(a[SIZE // 2, SIZE // 2], GREEN, 5)
    elif name == "la.png":  # L=50 at alpha 128 over grey 128
        assert np.abs(a.astype(int) - 89).max() <= 2
    elif name == "grey16.png":  # a ramp stretched over the range: increasing, all channels equal
        row = a[SIZE // 2, :, 0].astype(int)
        assert (np.diff(row) >= 0).all() and row[-1] - row[0] > 100
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    elif name == "float_all_nan.tiff":
        assert (a == 0).all()


def _load(name: str, data: bytes):
    """('accepted', array) | ('refused', message) | ('crash', repr) for one file."""
    from core.run.images import ImageError, load_probe_image

    try:
        return "accepted", load_probe_image(data, (SIZE, SIZE), channels=3)
    except ImageError as e:
        return "refused", str(e)
    except Exception as e:  # noqa: BLE001 - anything else is a bug
        return "crash", f"{type(e).__name__}: {e}"


def test_core_each_bad_image_refused_clearly_or_loaded_and_forward_pass_runs(engine8, tiny8):
    ckpt = tiny8.checkpoints()[-1]
    rows, failures, outcome = [], [], collections.Counter()
    for name, data, expected in CORPUS:
        how, val = _load(name, data)
        outcome[how] += 1
        note = ""
        if how == "crash":
            failures.append(f"{name}: crashed with {val}")
        elif how == "refused":
            note = val[:90]
            if expected == "ok":
                failures.append(f"{name}: refused but should load: {val}")
            # a clear message: says what is wrong with the file and what to do
            if not (len(val) > 30 and any(w in val.lower() for w in ("upload", "use ", "re-", "try", "resize"))):
                failures.append(f"{name}: unclear message {val!r}")
        else:
            a = val
            if expected == "error":
                failures.append(f"{name}: loaded but should be refused")
            if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == (SIZE, SIZE, 3)
                    and a.flags.c_contiguous):
                failures.append(f"{name}: bad array {type(a)} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}")
                continue
            try:
                _check_content(name, a)
            except AssertionError as e:
                failures.append(f"{name}: wrong content {e}")
            try:  # the engine accepts it: one forward pass, every tap finite
                acts = engine8.activations(ckpt, a[None])
                bad = [t for t, v in acts.items() if v.shape[0] != 1 or not np.isfinite(v).all()]
                note = f"forward pass ok ({len(acts)} taps)"
                if bad:
                    failures.append(f"{name}: forward pass gave non-finite/odd taps {bad[:3]}")
            except Exception as e:  # noqa: BLE001
                failures.append(f"{name}: forward pass failed: {type(e).__name__}: {e}")
        rows.append((name, len(data), expected, how, note))
    print("\n\nBad images, core level (load_probe_image + RunEngine.activations):")
    print(table(rows, ("file", "bytes", "expected", "ended", "message / forward pass")))
    print(f"totals: {dict(outcome)} of {len(CORPUS)} files")
    assert not failures, "\n".join(failures)


def _uploader(at):
    ups = at.get("file_uploader")
    assert ups, "no file uploader on the page (source radio not on 'upload'?)"
    return ups[0]


def _app_outcome(at, name: str) -> tuple[str, str]:
    if at.exception:
        return "exception", at.exception[0].message
    shown = " ".join(texts(at, "markdown"))
    if f"upload {name}" in shown:
        return "accepted", ""
    errs = [e for e in texts(at, "error") if e]
    if errs:
        return "refused", errs[0]
    return "silent", " | ".join(texts(at, "caption"))[:200]


@pytest.mark.slow
def test_app_upload_each_bad_image_then_a_good_one(runs_root, monkeypatch):
    """Upload every corpus file through the sidebar of the grid page; refused ones show an error,
    the session survives, and a good upload right after a bad one works."""
    monkeypatch.setenv("ADE_RUNS_ROOT", str(runs_root))
    good_name, good = next((n, d) for n, d, e in CORPUS if n == "photo.jpg")
    at = new_app(page="grid", run="tiny", ckpt=3)
    at.run()
    assert_no_exception(at, "first load")
    src = next(r for r in at.sidebar.radio if r.label == "Probe image")
    src.set_value("upload").run()
    assert_no_exception(at, "switch to upload")
    expected_core = {name: _load(name, data)[0] for name, data, _ in CORPUS}
    rows, failures, tally = [], [], collections.Counter()
    for name, data, expected in CORPUS:
        _uploader(at).set_value((name, data, mime_of(name)))
        at.run()
        how, msg = _app_outcome(at, name)
        tally[how] += 1
        after = ""
        if how == "exception":
            failures.append(f"{name}: page raised {msg}")
        elif how == "silent":
            failures.append(f"{name}: neither shown nor refused with a message ({msg})")
        elif how != expected_core[name]:
            failures.append(f"{name}: app {how}, core {expected_core[name]}")
        if how == "refused":
            assert "probe image #0" in " ".join(texts(at, "caption")), "no fallback note after a refusal"
            # the session keeps working: a good upload right after the bad one is shown
            good_as = f"good_after_{name}.jpg"
            _uploader(at).set_value((good_as, good, "image/jpeg"))
            at.run()
            g, gmsg = _app_outcome(at, good_as)
            after = g
            if g != "accepted":
                failures.append(f"{name}: the good upload after it ended {g} {gmsg}")
        rows.append((name, expected, how, msg[:80], after))
    # clearing the upload goes back to the probe image
    _uploader(at).set_value(None)
    at.run()
    assert_no_exception(at, "clear upload")
    print("\n\nBad images, app level (grid page, sidebar upload, one session):")
    print(table(rows, ("file", "expected", "ended", "message shown", "good upload after")))
    print(f"totals: {dict(tally)} of {len(CORPUS)} uploads; {sum(1 for r in rows if r[4])} good uploads "
          f"after refusals, all in ONE session")
    assert not failures, "\n".join(failures)
