"""ONNX Runtime sessions on the CPU, the one place they are made (torch-free: the lean install uses it)."""

from __future__ import annotations

import os


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """A CPU inference session over ``path`` with all graph optimisations, ``threads`` intra-op threads
    (default: :func:`imutility.zoo.base.default_threads`)."""
    import onnxruntime as ort

    from imutility.zoo.base import default_threads

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads or default_threads()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
