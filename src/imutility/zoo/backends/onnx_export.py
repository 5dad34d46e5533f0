"""Run a PyTorch classifier through ONNX Runtime on CPU: exported once, cached by weights hash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from imutility.zoo.backends.ort import ort_session
from imutility.zoo.base import Classifier, LabelerSpec
from imutility.zoo.weights import cache_dir, file_sha256

__all__ = ["OnnxClassifier", "cached_export", "export_onnx", "ort_session"]


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path, metadata: dict[str, str] | None = None
                ) -> None:
    """Export with a dynamic batch axis and optional metadata properties; written atomically (a killed export
    leaves nothing half-done) with the usual file mode (not mkstemp's owner-only 0600)."""
    from imutility.atomic import FILE_MODE

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        torch.onnx.export(model, (sample,), tmp, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        if metadata:
            import onnx

            m = onnx.load(tmp)
            for k, v in metadata.items():
                m.metadata_props.add(key=k, value=v)
            onnx.save(m, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def cached_export(model: torch.nn.Module, sample: torch.Tensor, name: str, folder: Path | None = None) -> Path:
    """``folder/name`` (default folder: the cache's ``onnx/``), exported from ``model`` on ``sample`` if it is not
    there yet: the one export-and-cache scheme of the project (the zoo's ONNX labelers, the predictors' backbone
    features graphs). ``name`` must say everything that shapes the graph (the weights' hash, the torch version
    where it matters)."""
    path = Path(folder or cache_dir() / "onnx") / name
    if not path.exists():
        export_onnx(model.eval(), sample, path)
    return path


class OnnxClassifier(Classifier):
    """A classifier whose forward pass is an ONNX Runtime session: logits (1000, or 1001 with a background class)
    or, as ``options.output`` declares, probabilities; a custom classifier's own ``classes`` as declared."""

    def __init__(self, spec: LabelerSpec, onnx_path: str | os.PathLike):
        self.spec = spec
        self.onnx_path = Path(onnx_path)
        self.session = ort_session(onnx_path)
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = spec.options.batch_size or 32

    @classmethod
    def from_torch(cls, spec: LabelerSpec, model: torch.nn.Module, weights_path: Path | None) -> OnnxClassifier:
        tag = file_sha256(weights_path)[:16] if weights_path is not None else "random"
        h, w = spec.preprocess.size
        return cls(spec, cached_export(model, torch.zeros(1, 3, h, w),
                                       f"{spec.name}-{tag}-torch{torch.__version__.split('+')[0]}.onnx"))

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        from imutility.zoo.base import drop_background_logits

        x = batch.astype(np.float32) if self.spec.preprocess.dtype == "float32" else batch
        out = self.session.run(None, {self.input_name: x})[0].reshape(len(batch), -1)
        return drop_background_logits(out) if self.spec.classes is None else out

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        if self.spec.options.output == "probs":
            return super()._logits(batch)  # a graph that outputs probabilities has no logits to give
        return self._raw(batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        from imutility.zoo.base import softmax

        out = self._raw(batch).astype(np.float64)
        return out if self.spec.options.output == "probs" else softmax(out)
