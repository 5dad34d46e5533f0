"""TFLite classifiers through ai-edge-litert: quantised input and output handled from the tensors' own parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imutility.errors import InvalidInputError
from imutility.zoo.base import Classifier, LabelerSpec, drop_background, drop_background_logits, softmax


def make_interpreter(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ImportError("TFLite labelers need: pip install ai-edge-litert") from e
    from imutility.quiet import native_stderr_quiet

    with native_stderr_quiet():  # LiteRT prints an INFO banner from C++ on every interpreter it makes
        try:
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
        except (RuntimeError, ValueError):
            # some models only run on the reference kernels, not the XNNPACK delegate
            it = Interpreter(model_path=str(path), num_threads=threads,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            it.allocate_tensors()
    return it


def quantise_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """An input batch in the dtype of a TFLite input tensor, quantised by the tensor's own scale and zero point."""
    dtype = detail["dtype"]
    if x.dtype == dtype:
        return x
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero) if scale else x, info.min, info.max).astype(dtype)
    return x.astype(dtype)


class TFLiteClassifier(Classifier):
    """One image per invoke (XNNPACK cannot resize these graphs to a batch), any dtype, NHWC or NCHW.

    ``options.output``: ``probs`` (already softmaxed, e.g. a uint8 output with scale 1/256) or
    ``logits``; a 1001-wide output drops its background class and is renormalised.
    """

    def __init__(self, spec: LabelerSpec, path: Path):
        from imutility.zoo.base import default_threads

        self.spec = spec
        self.interpreter = make_interpreter(path, default_threads())
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        expected = tuple(spec.preprocess.size)
        shape = tuple(self.inp["shape"])
        hw = shape[2:4] if spec.preprocess.layout == "NCHW" else shape[1:3]
        if tuple(hw) != expected:
            raise InvalidInputError(f"{path}: input {shape} does not match the declared {spec.preprocess.layout} "
                             f"size {expected}")
        self.batch_size = spec.options.batch_size or 32

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        return quantise_input(x, self.inp)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        if self.spec.options.output != "logits":
            return super()._logits(batch)
        return drop_background_logits(self._raw(batch))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        y = self._raw(batch)
        probs = softmax(y) if self.spec.options.output == "logits" else y
        if probs.shape[1] == 1001:
            return drop_background(probs)
        total = probs.sum(1, keepdims=True)  # quantised probabilities sum to ~1; make it exact
        return np.divide(probs, total, out=np.full_like(probs, 1e-3), where=total > 0)

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        """The model's dequantised output, image by image (the models have a fixed batch of 1)."""
        it, rows = self.interpreter, []
        for x in batch:
            it.set_tensor(self.inp["index"], self._quantise(x[None]))
            it.invoke()
            y = it.get_tensor(self.out["index"])[0].astype(np.float64)
            scale, zero = self.out["quantization"]
            if scale:
                y = (y - zero) * scale
            rows.append(y)
        return np.stack(rows)


def build_tflite_classifier(spec: LabelerSpec, weights_path: Path | None, **_: object) -> TFLiteClassifier:
    if weights_path is None:
        raise ValueError(f"{spec.name}: a TFLite model has no random-initialised form")
    return TFLiteClassifier(spec, weights_path)
