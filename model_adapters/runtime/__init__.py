"""The performance layer: a Runtime wraps a model with its kernels, CUDA graphs and caches (runtime.py); masked,
capturable readings (readings.py); CUDA-graph mechanics (graphs.py); greedy decoding (generation.py)."""

from .runtime import GRAPH_MODES, Runtime

__all__ = ["GRAPH_MODES", "Runtime"]
