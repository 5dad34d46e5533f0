"""Where a predictor runs: the ONE decision of (device, runtime, precision), for the library and the CLI alike.

:func:`resolve` is called by :meth:`imutility.predictor.Predictor.load` and by nothing else: ``imutility predict``
and ``Predictor.load("default")`` in a script get the same engine. The rule:

- ``runtime="auto"`` (the default): on the CPU, ONNX Runtime over the predictor's graphs (several times faster
  than eager PyTorch there, and no PyTorch needed), or PyTorch for a folder without graphs (an old predictor;
  ``imutility export --graphs`` makes them: loading never does); on a GPU, PyTorch.
- ``precision``: ``fp32`` anywhere; ``bf16``/``fp16`` (autocast) on a CUDA device; ``int8`` on the CPU, which
  runs a content predictor's quantized backbone on ONNX Runtime.
- Anything else is refused in one line (:class:`imutility.errors.SettingError`) before any work.

Torch-free: the lean install resolves through it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from imutility.errors import SettingError

#: the runtimes a predictor runs on: ONNX Runtime (CPU, no PyTorch) or PyTorch (CPU or GPU)
RUNTIMES = ("onnx", "torch")
#: what a caller may ask for: one of :data:`RUNTIMES`, or ``auto`` (see the module doc)
RUNTIME_CHOICES = ("auto", *RUNTIMES)
#: the network's precision on a CUDA device (autocast)
CUDA_PRECISIONS = ("fp32", "bf16", "fp16")
#: ... and on the CPU: int8 runs a content predictor's quantized backbone (ONNX Runtime)
CPU_PRECISIONS = ("fp32", "int8")
PRECISION_NAMES = tuple(dict.fromkeys(CUDA_PRECISIONS + CPU_PRECISIONS))


def torch_available() -> bool:
    """Whether PyTorch can be imported here (the lean install has none)."""
    return importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Placement:
    device: str
    runtime: str
    precision: str

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"


def resolve(device: str = "cpu", runtime: str | None = "auto", precision: str = "fp32",
            has_graphs: bool = True) -> Placement:
    """The placement of a predictor (see the module doc); ``has_graphs``: whether its folder holds ONNX graphs
    that fit its card."""
    device, runtime = str(device), runtime or "auto"
    if precision not in PRECISION_NAMES:
        raise SettingError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {precision!r}")
    if runtime not in RUNTIME_CHOICES:
        raise SettingError(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    on_cpu = device == "cpu"
    if not on_cpu and precision not in CUDA_PRECISIONS:
        raise SettingError(f"precision {precision} is for the CPU (ONNX Runtime), not {device}; on CUDA: "
                           f"{', '.join(CUDA_PRECISIONS)}")
    if on_cpu and precision not in CPU_PRECISIONS:
        raise SettingError(f"precision {precision} is for a CUDA device, not {device}; on the CPU: "
                           f"{', '.join(CPU_PRECISIONS)}")
    if precision == "int8":
        if runtime == "torch":
            raise SettingError("precision int8 runs on ONNX Runtime: runtime 'onnx' (or 'auto')")
        runtime = "onnx"
    if runtime == "auto":
        runtime = "torch" if not on_cpu or (not has_graphs and torch_available()) else "onnx"
    if runtime == "onnx" and not on_cpu:
        raise SettingError(f"the ONNX runtime runs on the CPU; device {device} needs runtime 'torch'")
    if runtime == "torch" and not torch_available():
        raise SettingError("runtime 'torch' needs PyTorch: pip install 'imutility[train]' (or runtime 'onnx' on the "
                           "CPU)")
    return Placement(device, runtime, precision)
