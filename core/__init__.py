"""Activation Dynamics Explorer core: run directories, extraction engine, statistics, diagnostics."""
import os as _os

# OpenBLAS's threads fight TensorFlow's for the same cores: a float64 dot product of
# 50k elements then takes ~6 ms instead of ~13 us. Must be set before numpy loads.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
