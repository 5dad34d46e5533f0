"""Third-party noise off by default on the command line (``imutility --verbose`` keeps it): warnings that say
nothing to a user of this tool (PyTorch's ONNX exporter on every export, numpy's polyfit conditioning in curve
fits) and the native runtimes' INFO lines (TensorFlow Lite's delegate banner, ONNX Runtime's). Errors are never
silenced."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

#: set by :func:`quiet_third_party`; ``imutility --verbose`` leaves it False
_QUIET = False


def quiet_third_party() -> None:
    global _QUIET
    _QUIET = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow Lite / LiteRT: warnings and errors only
    os.environ.setdefault("ORT_LOG_SEVERITY_LEVEL", "3")
    for module in ("torch.onnx", "torch.jit", "torch._dynamo", "onnxruntime", "onnxscript"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", message=".*Constant folding.*")
    warnings.filterwarnings("ignore", message=".*TracerWarning.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import numpy as np

        warnings.filterwarnings("ignore", category=np.exceptions.RankWarning)
    except (ImportError, AttributeError):
        pass
    for name in ("torch.onnx", "onnxscript", "ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def native_stderr_quiet():
    """Silence what native code writes to the process's stderr (file descriptor 2) for the block, when the CLI asked
    for quiet; Python exceptions still carry every error."""
    if not _QUIET:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
