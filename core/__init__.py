"""Activation Dynamics Explorer core: run directories, extraction engine, statistics, diagnostics."""
import os as _os

# TensorFlow's thread pools already use every core; OpenBLAS's own threads would compete with
# them (bench/bench_internals.py times both settings). Must be set before numpy loads.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
