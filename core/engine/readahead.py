"""Work on the checkpoint after the one on screen, done in one background thread (no Streamlit here)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np


class ReadAhead:
    """Activations (and grid images) of the checkpoint after the one on screen, made in one background thread.

    Next, Play and the arrow keys step forward one checkpoint; with the work done while the
    user looks at the current one, the step costs a rerun instead of a weights read, a
    forward pass and drawing. Holds at most two results and eight drawings (keyed by the caller);
    remembers the last ``served_entries`` keys it handed out (the caller's cache holds those).
    """

    def __init__(self, served_entries: int) -> None:
        self.served_entries = served_entries
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ade-read-ahead")
        self.lock = threading.Lock()
        self.jobs: OrderedDict[tuple, Future] = OrderedDict()
        self.served: OrderedDict[tuple, None] = OrderedDict()  # keys image_activations computed lately
        self.drawings: OrderedDict[tuple, Any] = OrderedDict()  # drawn ahead, until drawn() asks
        self.prepared: dict[tuple, Future] = {}  # one-tap extractors being built

    def submit(self, key: tuple, fn: Callable[[], dict[str, np.ndarray]]) -> bool:
        with self.lock:
            if key in self.jobs or key in self.served:
                return False
            self.jobs[key] = self.pool.submit(fn)
            while len(self.jobs) > 2:
                self.jobs.popitem(last=False)[1].cancel()
            return True

    def take(self, key: tuple) -> dict[str, np.ndarray] | None:
        """The result for ``key`` (waiting if it is being computed), or None: compute it in the caller."""
        with self.lock:
            fut = self.jobs.pop(key, None)
            self.served[key] = None
            while len(self.served) > self.served_entries:
                self.served.popitem(last=False)
        if fut is None or fut.cancelled():
            return None
        try:
            return fut.result()
        except Exception:  # computed again in the caller, which reports the error properly
            return None

    def keep_drawings(self, drawings: dict[tuple, Any]) -> None:
        with self.lock:
            self.drawings.update(drawings)
            while len(self.drawings) > 8:
                self.drawings.popitem(last=False)

    def drawn(self, key: tuple) -> Any | None:
        """A drawing made ahead for this cache key (once), else None."""
        with self.lock:
            return self.drawings.pop(key, None)

    def idle(self) -> bool:
        with self.lock:
            return all(f.done() for f in (*self.jobs.values(), *self.prepared.values()))

    def known(self, key: tuple) -> bool:
        """``key`` is being computed ahead or was handed out lately."""
        with self.lock:
            return key in self.jobs or key in self.served

    def prepare(self, key: tuple, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the background thread (building a one-tap extractor) unless it is running for ``key``."""
        with self.lock:
            for k in [k for k, f in self.prepared.items() if f.done()]:
                del self.prepared[k]
            if key not in self.prepared:
                self.prepared[key] = self.pool.submit(fn)
