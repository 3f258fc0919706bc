"""Which process of a ``tf.distribute`` cluster writes the run, and whether a strategy spans processes."""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf


def chief_task(task_type: str | None, task_id: int | None, cluster: Mapping[str, Any] | None) -> bool:
    """Whether a task of a ``tf.distribute`` cluster is the one that writes.

    No cluster (single process) writes; otherwise the ``chief`` task writes, or
    ``worker`` 0 when the cluster has no chief (TensorFlow's own convention).
    """
    if not cluster:
        return True
    if task_type in (None, "", "chief"):
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in cluster


def _resolver_of(strategy) -> Any:
    return getattr(strategy, "cluster_resolver", None) if strategy is not None else None


def _cluster_of(resolver) -> dict[str, Any]:
    if resolver is None:
        return {}
    try:
        return dict(resolver.cluster_spec().as_dict())
    except Exception:  # a resolver that cannot describe its cluster is treated as single-process
        return {}


def is_chief(strategy=None) -> bool:
    """True in the one process that should write files.

    ``strategy`` defaults to the strategy in scope. Under
    MultiWorkerMirroredStrategy only the chief (or worker 0 when there is no
    chief) writes; MirroredStrategy and the default strategy have one process,
    which writes.
    """
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    resolver = _resolver_of(strategy)
    cluster = _cluster_of(resolver)
    if not cluster:
        return True
    return chief_task(getattr(resolver, "task_type", None), getattr(resolver, "task_id", None), cluster)


def is_multi_worker(strategy) -> bool:
    """True when ``strategy`` spans several processes (reads of synced variables become collectives)."""
    cluster = _cluster_of(_resolver_of(strategy))
    return sum(len(v) if isinstance(v, (list, dict)) else 1 for v in cluster.values()) > 1
