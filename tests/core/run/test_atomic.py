"""Atomic writes leave either the old or the new file, never a partial one, and no temp files."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from core.run.atomic import atomic_save_npz, atomic_write_bytes, atomic_write_json


def test_replace_and_no_leftovers(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    atomic_write_json(p, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(p, {"a": 2})
    assert p.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert os.listdir(tmp_path) == ["f.json"]


def test_concurrent_reader_never_sees_partial(tmp_path):
    p = tmp_path / "w.npz"
    big = [np.full((200_000,), i, np.float32) for i in range(2)]
    atomic_save_npz(p, {"w": big[0]})
    stop = threading.Event()
    bad: list[str] = []

    def reader():
        while not stop.is_set():
            with np.load(p, allow_pickle=False) as z:
                w = z["w"]
            if not (w == w[0]).all() or w.shape != (200_000,):
                bad.append("partial")

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        atomic_save_npz(p, {"w": big[i % 2]})
    stop.set()
    t.join()
    assert bad == []


def test_object_arrays_refused(tmp_path):
    with pytest.raises(TypeError, match="pickle"):
        atomic_save_npz(tmp_path / "x.npz", {"o": np.array([object()], dtype=object)})
