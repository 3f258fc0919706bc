"""A thread-safe LRU memo for what a scrub step looks up many times (no Streamlit hashing)."""
from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from typing import Any, Callable


class Memo:
    """A thread-safe LRU of a function's results, keyed by its arguments whose names do not start with "_".

    Used instead of ``st.cache_resource`` / ``st.cache_data`` for what a scrub step looks up
    ~10 times: those hash every argument through Streamlit's hasher (bench/bench_internals.py),
    this is a dict lookup. Values are shared, never copied: return immutable
    objects or read-only arrays. Concurrent callers of one key compute it once; errors are
    not cached. ``clear()`` empties it, as Streamlit's ``.clear()`` does.
    """

    def __init__(self, fn: Callable[..., Any], max_entries: int) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.max_entries = fn, max_entries
        params = list(inspect.signature(fn).parameters)
        self.keep = tuple(i for i, name in enumerate(params) if not name.startswith("_"))
        self.lock = threading.Lock()
        self.values: OrderedDict[tuple, Any] = OrderedDict()
        self.busy: dict[tuple, threading.Lock] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = (tuple(args[i] for i in self.keep if i < len(args)),
               tuple(sorted((k, v) for k, v in kwargs.items() if not k.startswith("_"))))
        with self.lock:
            if key in self.values:
                self.values.move_to_end(key)
                return self.values[key]
            gate = self.busy.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                if key in self.values:
                    return self.values[key]
            try:
                value = self.fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.busy.pop(key, None)
            with self.lock:
                self.values[key] = value
                while len(self.values) > self.max_entries:
                    self.values.popitem(last=False)
            return value

    def clear(self) -> None:
        with self.lock:
            self.values.clear()


def memo(max_entries: int) -> Callable[[Callable[..., Any]], Memo]:
    """Decorator: ``Memo`` with at most ``max_entries`` results."""
    return lambda fn: Memo(fn, max_entries)
